"""The pieces a Ray fleet refresh (issue #12) stands on, without Ray: the node command's resources, and the
worker entry point that runs exactly the step a local run would, refusing a key other than the driver's."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

from buildlib.fleet.ray_node import arch_resource, gpu_name_resource, node_resources, ray_start_argv
from buildlib.host.gpu import Gpu
from tests.conftest import A100, H100, LOADER_PYPROJECT, doit, plan, trtllm_log, write_hf_checkpoint


def test_node_resources_name_each_arch_and_exact_gpu():
    gpus = [Gpu(0, "NVIDIA H100 80GB HBM3", "sm90", 81559, 0), Gpu(1, "NVIDIA H100 PCIe", "sm90", 81559, 0)]
    assert node_resources(gpus) == {"gpu:NVIDIA-H100-80GB-HBM3": 1.0, "gpu:NVIDIA-H100-PCIe": 1.0, "sm_90": 2.0}
    assert arch_resource("sm100") == "sm_100" and gpu_name_resource("NVIDIA H200") == "gpu:NVIDIA-H200"
    argv = ray_start_argv(gpus, ["--address", "10.0.0.1:6379", "--resources={\"sm_90\": 1, \"disk\": 4}"])
    assert argv[:3] == ["ray", "start", "--num-gpus"] and argv[3] == "2"
    assert json.loads(argv[5]) == {"gpu:NVIDIA-H100-80GB-HBM3": 1.0, "gpu:NVIDIA-H100-PCIe": 1.0, "sm_90": 1,
                                   "disk": 4}  # the user's keys win
    assert argv[6:] == ["--address", "10.0.0.1:6379"]
    assert ray_start_argv(gpus, ["--num-gpus", "1", "--head"])[3:4] == ["1"]


def test_node_command_reads_the_real_nvidia_smi_format(standins):
    env = standins(gpus=[H100, H100, A100])
    r = subprocess.run([sys.executable, "-m", "buildlib.fleet.ray_node", "--print", "--head", "--node-ip-address",
                        "127.0.0.1"], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    argv = shlex.split(r.stdout.strip())
    assert argv[:4] == ["ray", "start", "--num-gpus", "3"]
    assert json.loads(argv[5]) == {"gpu:NVIDIA-A100-SXM4-80GB": 1.0, "gpu:NVIDIA-H100-80GB-HBM3": 2.0,
                                   "sm_80": 1.0, "sm_90": 2.0}
    assert argv[6:] == ["--head", "--node-ip-address", "127.0.0.1"]


def _request(tmp_path: Path, **req: str) -> Path:
    p = tmp_path / f"req-{len(list(tmp_path.glob('req-*')))}.json"
    p.write_text(json.dumps(req))
    return p


def test_worker_step_builds_what_the_driver_planned_and_refuses_another_key(tmp_path, standins):
    root = tmp_path / "repo"
    write_hf_checkpoint(root / "ckpt/llama", shards=2, seed=7)
    (root / "models.yaml").write_text("defaults: {backend: trtllm, archs: [sm90], build: {max_batch_size: 8}}\n"
                                      "models:\n  - {name: llama, checkpoint: ckpt/llama}\n")
    (root / "pyproject.toml").write_text(LOADER_PYPROJECT)
    env = standins(gpus=[H100])
    key = plan(root, env)["llama/sm90/tp1-pp1"]["key"]  # what a driver with no GPU plans
    worker = [sys.executable, "-m", "buildlib.fleet.remote"]
    bad = _request(tmp_path, models=str(root / "models.yaml"), engine="llama/sm90/tp1-pp1", step="build", key="0" * 32)
    r = subprocess.run([*worker, str(bad)], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "not building" in json.loads(r.stdout)["error"] and trtllm_log(env) == []
    for step in ("build", "validate"):
        req = _request(tmp_path, models=str(root / "models.yaml"), engine="llama/sm90/tp1-pp1", step=step, key=key)
        r = subprocess.run([*worker, str(req)], env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr
        out = json.loads(r.stdout.splitlines()[-1])
        assert out["ok"] is True and out["state"] == "fresh" and out["key"] == key
    assert len(trtllm_log(env)) == 1
    # the driver then holds exactly what a local build leaves: manifest, validation, stamps
    assert plan(root, env)["llama/sm90/tp1-pp1"]["state"] == "fresh"
    r = doit(root, env=env)
    assert r.returncode == 0 and "nothing to do: 1 up to date" in r.stdout and len(trtllm_log(env)) == 1
