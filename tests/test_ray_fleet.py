"""A fleet refresh on a real local Ray cluster (issue #12): two nodes of different archs (stand-in GPUs), a
driver with no GPU. Engines land only on nodes of their arch, each is built once, an arch no node has is
reported blocked, and the driver ends with every buildable engine fresh."""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import A100, H100, LOADER_PYPROJECT, doit, plan, trtllm_log, write_hf_checkpoint
from tests.raycluster import own_processes, start_node, stop

ray = pytest.importorskip("ray")

MODELS = """\
defaults: {backend: trtllm, build: {max_batch_size: 8, max_seq_len: 512}}
models:
  - {name: llama, checkpoint: ckpt/llama, archs: [sm80, sm90], parallel: [{tp: 1, pp: 1}, {tp: 2, pp: 1}]}
  - {name: mistral, checkpoint: ckpt/mistral, archs: [sm90, sm100]}
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[str]:
    """A head node with two sm90 GPUs and a worker node with one sm80 GPU, on loopback, in their own temp dir,
    shared by this module's tests (each test is its own Ray job, with its own env: see job())."""
    from tests.standins import standin_env

    base = tmp_path_factory.mktemp("cluster")
    temp = tempfile.mkdtemp(prefix="rt-", dir="/tmp")  # short: Ray's unix socket paths must fit 107 bytes
    port = 20000 + os.getpid() % 20000
    try:
        start_node(standin_env(base / "s90", gpus=[H100, H100]), temp, "--head", "--port", str(port),
                   "--temp-dir", temp, "--include-dashboard=false")
        start_node(standin_env(base / "s80", gpus=[A100]), temp, "--address", f"127.0.0.1:{port}")
        yield f"127.0.0.1:{port}"
    finally:
        stop(temp)
        assert not own_processes(temp)
        shutil.rmtree(temp, ignore_errors=True)


def job(addr: str, standins, tmp_path: Path, runtime_env: dict | None = None, **env_vars: str) -> dict[str, str]:
    """The driver's env for one test: no GPU, the cluster's address, and a runtime_env whose env_vars reach the
    job's workers: this test's own stand-in build log (read back with trtllm_log(driver)) and hooks."""
    log = str(tmp_path / "builds.log")
    runtime = {**(runtime_env or {}), "env_vars": {"STANDIN_TRTLLM_LOG": log, **env_vars}}
    return {**standins(gpus=[]), "BUILDLIB_RAY": addr, "STANDIN_TRTLLM_LOG": log,
            "BUILDLIB_RAY_RUNTIME_ENV": json.dumps(runtime)}


def wait_started(proc: subprocess.Popen, fifo: Path) -> None:
    """Block until the stand-in builder writes its FIFO; if the driver exits first, fail with its output
    instead of hanging (a watcher opens the FIFO's writing end when the driver is gone)."""
    threading.Thread(target=lambda: (proc.wait(), open(fifo, "w").close()), daemon=True).start()
    with open(fifo) as f:
        line = f.read()
    if not line:
        out, err = proc.communicate()
        pytest.fail(f"the driver exited ({proc.returncode}) before the build started:\n{out}{err}")


def one_engine_repo(root: Path, seed: int, top: str = "") -> Path:
    """A repo with one llama checkpoint and one sm90 engine (`top`: lines before `defaults:`, e.g. a store)."""
    write_hf_checkpoint(root / "ckpt/llama", shards=1, seed=seed)
    (root / "models.yaml").write_text(top + "defaults: {backend: trtllm, build: {max_batch_size: 8}}\n"
                                      "models:\n  - {name: llama, checkpoint: ckpt/llama, archs: [sm90]}\n")
    (root / "pyproject.toml").write_text(LOADER_PYPROJECT)
    return root


def standin_env_for(root: Path, gpus: list[dict]) -> dict[str, str]:
    from tests.standins import standin_env

    return standin_env(root, gpus=gpus)


def test_refresh_lands_each_engine_on_its_arch_once_from_a_driver_without_gpus(tmp_path, cluster, standins):
    root = tmp_path / "repo"
    write_hf_checkpoint(root / "ckpt/llama", shards=2, seed=1)
    write_hf_checkpoint(root / "ckpt/mistral", shards=1, seed=2, arch="MistralForCausalLM")
    (root / "models.yaml").write_text(MODELS)
    (root / "pyproject.toml").write_text(LOADER_PYPROJECT)
    driver = node_env = job(cluster, standins, tmp_path)
    r = doit(root, "-n", "8", "-P", "thread", env=driver, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    builds = trtllm_log(node_env)
    where = {}
    for rec in builds:
        out = Path(rec["argv"][rec["argv"].index("--output_dir") + 1])
        eid = f"{out.parent.parent.name}/{out.parent.name}/{out.name.split('.tmp-')[0].lstrip('.')}"
        where.setdefault(eid, []).append(rec["gpus"])
    expected = {"llama/sm80/tp1-pp1", "llama/sm80/tp2-pp1", "llama/sm90/tp1-pp1", "llama/sm90/tp2-pp1",
                "mistral/sm90/tp1-pp1"}
    assert set(where) == expected and all(len(v) == 1 for v in where.values()), where  # each built once
    for eid, (gpus,) in where.items():  # on a node of its arch only
        assert {g["compute_cap"] for g in gpus} == {"8.0" if "/sm80/" in eid else "9.0"}, (eid, gpus)
    states = plan(root, driver)
    # built on the 1-GPU sm80 node, but its 2 ranks need 2 GPUs to validate: never shown as good
    assert {e for e, s in states.items() if s["state"] == "fresh"} == expected - {"llama/sm80/tp2-pp1"}
    assert states["llama/sm80/tp2-pp1"]["state"] == "blocked"
    assert "no node of the Ray cluster has 2 sm_80" in r.stdout
    assert states["mistral/sm100/tp1-pp1"]["state"] == "blocked"
    assert "no node of the Ray cluster has 1 sm_100" in r.stdout
    assert "sm90: 1 running" in r.stdout and "sm80: 1 waiting" in r.stdout, r.stdout  # per arch, while it runs
    assert "ray: at the end: sm100: 1 blocked; sm80: 1 blocked, 1 done; sm90: 3 done" in r.stdout, r.stdout
    r = doit(root, env=driver)  # a second refresh has nothing to do
    assert r.returncode == 0 and len(trtllm_log(node_env)) == len(builds)


def test_workers_without_the_drivers_engines_dir_send_engines_back_through_the_store(tmp_path, cluster, standins):
    """The driver ships its checkout as Ray's working_dir: each worker builds into its own copy, pushes to the
    shared store; the driver restores the engine and keeps the worker's validation record beside it, so it holds
    what a local build makes (manifest, validation.json) and `doit plan` shows it fresh, not `not validated yet`."""
    root = tmp_path / "repo"
    store = tmp_path / "store"
    store.mkdir()
    one_engine_repo(root, seed=5, top=f"store: {store}\n")
    driver = node_env = job(cluster, standins, tmp_path, {"working_dir": str(root)})
    r = doit(root, env=driver, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    (build,) = trtllm_log(node_env)
    out = Path(build["argv"][build["argv"].index("--output_dir") + 1])
    assert root not in out.parents, out  # built in the worker's own copy, not in the driver's engines dir
    dest = root / "engines/llama/sm90/tp1-pp1"
    manifest = json.loads((dest / "manifest.json").read_text())
    record = json.loads((dest / "validation.json").read_text())
    assert record["ok"] is True and record["key"] == manifest["key"], record
    assert (store / manifest["key"]).is_dir()
    assert plan(root, driver)["llama/sm90/tp1-pp1"]["state"] == "fresh"
    r = doit(root, env=driver)
    assert r.returncode == 0 and len(trtllm_log(node_env)) == 1, r.stdout + r.stderr


def test_a_failing_build_is_reported_with_its_log_and_not_retried(tmp_path, cluster, standins):
    root = tmp_path / "repo"
    one_engine_repo(root, seed=6)
    # the builder kills itself after rank 0, on the node (the hook reaches it through the job's env)
    driver = node_env = job(cluster, standins, tmp_path, STANDIN_TRTLLM_CRASH_AFTER_RANK="0")
    r = doit(root, env=driver, timeout=600)
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    assert "build:llama/sm90/tp1-pp1 failed (killed by SIGKILL); full log: " in out, out
    assert "ray: at the end: sm90: 1 failed" in out
    assert len(trtllm_log(node_env)) == 1  # a failing build is not a lost node: not retried
    assert not (root / "engines/llama/sm90/tp1-pp1/manifest.json").exists()


def test_ctrl_c_on_the_driver_cancels_the_ray_tasks(tmp_path, cluster, standins):
    root = tmp_path / "repo"
    one_engine_repo(root, seed=3)
    marker = tmp_path / "started"
    # the worker's builder blocks after rank 0 (the hook comes to the node through the job's env)
    driver = node_env = job(cluster, standins, tmp_path, STANDIN_TRTLLM_STARTED_FIFO=str(marker))
    os.mkfifo(marker)
    proc = subprocess.Popen([sys.executable, "-m", "doit"], cwd=root, env=driver, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    wait_started(proc, marker)  # the build is running on the sm90 node
    builder = trtllm_log(node_env)[-1]["pid"]
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and err.strip().splitlines()[-1] == "interrupted", out + err
    try:  # wait for the builder's exit itself (pidfd): Ray kills the cancelled task's worker, the builder dies with it
        fd = os.pidfd_open(builder)
    except ProcessLookupError:
        gone = True
    else:
        gone = bool(select.select([fd], [], [], 60)[0])
        os.close(fd)
    assert gone
    assert not (root / "engines/llama/sm90/tp1-pp1/manifest.json").exists()


def test_a_node_killed_mid_build_has_its_build_retried_on_another_node(tmp_path, standins):
    """Two sm90 nodes; the one that takes the build first dies mid-build (every process of it SIGKILLed, as a
    lost machine). Ray retries the task on the other node; nothing of the dead node's half-built engine is
    published, and the driver ends with the engine fresh, built to completion exactly once."""
    temp = tempfile.mkdtemp(prefix="rt-", dir="/tmp")
    port = 20000 + (os.getpid() + 7) % 20000
    log = str(tmp_path / "trtllm-build.log")
    marker = tmp_path / "started"
    os.mkfifo(marker)
    doomed = {**standin_env_for(tmp_path / "sa", [H100]), "STANDIN_TRTLLM_LOG": log,
              "STANDIN_TRTLLM_STARTED_FIFO": str(marker)}  # its build blocks after rank 0, until the node dies
    spare = {**standin_env_for(tmp_path / "sb", [H100]), "STANDIN_TRTLLM_LOG": log}
    tags = [temp, temp + "-doomed", temp + "-spare"]
    root = tmp_path / "repo"
    one_engine_repo(root, seed=4)
    driver = {**standins(gpus=[]), "BUILDLIB_RAY": f"127.0.0.1:{port}", "STANDIN_TRTLLM_LOG": log}
    try:
        start_node(standins(gpus=[]), tags[0], "--head", "--port", str(port), "--temp-dir", temp,
                   "--include-dashboard=false")  # the head has no GPU: the build can only go to a worker node
        start_node(doomed, tags[1], "--address", f"127.0.0.1:{port}")
        proc = subprocess.Popen([sys.executable, "-m", "doit"], cwd=root, env=driver, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        wait_started(proc, marker)  # the build is half-way on the doomed node
        start_node(spare, tags[2], "--address", f"127.0.0.1:{port}")
        stop(tags[1])  # the doomed node's machine is gone: raylet, worker, builder
        out, err = proc.communicate(timeout=300)
    finally:
        for tag in tags:
            stop(tag)
        assert not any(own_processes(tag) for tag in tags)
        shutil.rmtree(temp, ignore_errors=True)
    assert proc.returncode == 0, out + err
    runs = [json.loads(line) for line in Path(log).read_text().splitlines()]
    assert len(runs) == 2 and runs[0]["pid"] != runs[1]["pid"], runs  # started twice: once per node
    left = sorted(p.name for p in (root / "engines/llama/sm90").iterdir())
    assert left == [".tp1-pp1.lock", "tp1-pp1"], left  # no half-built leftovers (.tmp-*), only the lock file
    assert plan(root, driver)["llama/sm90/tp1-pp1"]["state"] == "fresh"
    r = doit(root, env=driver)  # fresh: nothing rebuilt
    assert r.returncode == 0 and len(Path(log).read_text().splitlines()) == 2
