"""TensorRT-LLM path end to end through the real doit CLI, with stand-ins at the process boundary."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest

from tests.conftest import LOADER_PYPROJECT, built_engines, copy_built, doit, plan, trtllm_log, write_hf_checkpoint

MODELS = """\
defaults:
  backend: trtllm
  dtype: float16
  archs: [sm90]
  parallel: [{tp: 1, pp: 1}]
  build: {max_batch_size: 8, max_input_len: 1024, max_seq_len: 2048, gemm_plugin: auto}
models:
  - name: llama
    checkpoint: ckpt/llama
    archs: [sm80, sm90]
    parallel: [{tp: 1, pp: 1}, {tp: 2, pp: 1}]
    build: {max_batch_size: 64}
  - name: mistral
    checkpoint: ckpt/mistral
"""

LLAMA_SM90 = {"llama/sm90/tp1-pp1", "llama/sm90/tp2-pp1"}
ALL_SM90 = LLAMA_SM90 | {"mistral/sm90/tp1-pp1"}


@pytest.fixture(scope="module")
def _built(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """The fleet built once for this module (stand-in TensorRT-LLM on two stand-in H100s)."""
    from tests.conftest import H100
    from tests.standins import standin_env

    base = tmp_path_factory.mktemp("built")
    root = base / "repo"
    root.mkdir()
    write_hf_checkpoint(root / "ckpt/llama", shards=4, seed=1)
    write_hf_checkpoint(root / "ckpt/mistral", shards=2, seed=2, arch="MistralForCausalLM")
    (root / "models.yaml").write_text(MODELS)
    (root / "pyproject.toml").write_text(LOADER_PYPROJECT)
    env = {**standin_env(base / "standins", gpus=[H100, H100]), "STANDIN_TRTLLM_LOG": str(base / "trtllm-build.log")}
    r = doit(root, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    return root, env


@pytest.fixture
def project(tmp_path: Path, _built) -> tuple[Path, dict[str, str]]:
    """Each test's own copy of the built fleet (engines, converted checkpoints, stat cache, doit db) and of
    the stand-in build log: a copied tree is judged by its manifests like any other."""
    return copy_built(*_built, tmp_path)


def _converted(root: Path) -> list[Path]:
    return sorted(p for p in (root / ".buildlib/checkpoints").iterdir() if not p.name.startswith("."))


def _run(root: Path, env: dict[str, str], *args: str) -> set[str]:
    """Run doit; return the engines trtllm-build was asked to build during this run."""
    before = len(trtllm_log(env))
    r = doit(root, *args, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    return set(built_engines(env)[before:])


def test_first_run_builds_every_buildable_engine(project):
    root, env = project
    assert set(built_engines(env)) == ALL_SM90
    states = plan(root, env)
    assert {k for k, v in states.items() if v["state"] == "fresh"} == ALL_SM90
    assert states["llama/sm80/tp1-pp1"]["state"] == "blocked"
    assert "needs an sm80 host" in states["llama/sm80/tp1-pp1"]["reasons"]
    e = root / "engines/llama/sm90/tp2-pp1"
    assert sorted(p.name for p in e.iterdir()) == ["build.log", "config.json", "manifest.json",
                                                   "rank0.engine", "rank1.engine", "validate.log", "validation.json"]
    cfg = json.loads((e / "config.json").read_text())
    assert {"version", "pretrained_config", "build_config"} <= cfg.keys()
    m = json.loads((e / "manifest.json").read_text())
    assert m["key"] == states["llama/sm90/tp2-pp1"]["key"]
    assert m["fields"]["build"]["max_batch_size"] == 64
    assert m["fields"]["toolchain"]["tensorrt_llm"] == "1.2.1"
    assert set(m["outputs"]) == {"config.json", "rank0.engine", "rank1.engine"}


def test_workers_and_gpus_follow_world_size(project):
    _, env = project
    by_engine = {e: rec for e, rec in zip(built_engines(env), trtllm_log(env), strict=True)}
    tp2 = by_engine["llama/sm90/tp2-pp1"]["argv"]
    assert tp2[tp2.index("--workers") + 1] == "2"
    assert by_engine["llama/sm90/tp2-pp1"]["CUDA_VISIBLE_DEVICES"] == "0,1"
    tp1 = by_engine["mistral/sm90/tp1-pp1"]["argv"]
    assert tp1[tp1.index("--workers") + 1] == "1"
    assert "--output_timing_cache" in tp1 and "--input_timing_cache" in tp1


def test_second_run_builds_nothing(project):
    root, env = project
    assert _run(root, env) == set()
    r = doit(root, "plan", "--check", env=env)
    assert r.returncode == 0, r.stdout


def test_noop_run_has_no_tasks_for_done_engines_but_every_command_sees_them(project):
    root, env = project
    r = doit(root, env=env)
    assert r.returncode == 0, r.stderr
    assert "-- build:" not in r.stdout and "-- validate:" not in r.stdout and "-- convert:" not in r.stdout
    assert r.stdout.splitlines()[-1] == "nothing to do: 3 up to date, 2 not for this host", r.stdout
    # no store to restore them from: engines this host cannot build get no tasks either, one line says why
    assert "build:llama/sm80" not in r.stdout
    assert "2 engines not built here, needs an sm80 host: llama/sm80/tp1-pp1, llama/sm80/tp2-pp1" in r.stdout
    r = doit(root, "sm90", env=env)  # a group: the same
    assert "nothing to do: 3 up to date" in r.stdout and "-- build:" not in r.stdout
    listed = doit(root, "list", "--all", env=env).stdout.split()
    assert {f"build:{e}" for e in ALL_SM90} | {f"validate:{e}" for e in ALL_SM90} <= set(listed)
    r = doit(root, "build:mistral/sm90/tp1-pp1", env=env)  # a task by name: doit's own up-to-date line
    assert r.returncode == 0 and "-- build:mistral/sm90/tp1-pp1" in r.stdout
    assert "up to date (" not in r.stdout


def test_changed_shard_rebuilds_only_that_models_engines(project):
    root, env = project
    shard = root / "ckpt/llama/model-00002-of-00004.safetensors"
    data = shard.read_bytes()
    shard.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # a weight byte: the header stays valid
    states = plan(root, env)
    assert states["llama/sm90/tp1-pp1"]["state"] == "stale"
    assert states["llama/sm90/tp1-pp1"]["reasons"] == \
        ["checkpoint model-00002-of-00004.safetensors changed (weights only)"]
    assert states["mistral/sm90/tp1-pp1"]["state"] == "fresh"
    r = doit(root, "plan", "--check", env=env)
    assert r.returncode == 1
    before = len(trtllm_log(env))
    r = doit(root, env=env)
    assert set(built_engines(env)[before:]) == LLAMA_SM90
    assert "mistral" not in r.stdout  # its tasks were left out, counted in the tally
    assert r.stdout.splitlines()[-1] == "2 built, 2 validated, 1 up to date, 2 not for this host", r.stdout


def test_touched_identical_file_rebuilds_nothing(project):
    root, env = project
    for p in (root / "ckpt").rglob("*"):
        if p.is_file():
            os.utime(p)
    assert _run(root, env) == set()


def test_changed_build_option_rebuilds_builds_but_not_conversion(project):
    root, env = project
    converted = _converted(root)
    stamps = {p: (p / "manifest.json").stat().st_mtime_ns for p in converted}
    (root / "models.yaml").write_text(MODELS.replace("max_batch_size: 64", "max_batch_size: 16"))
    states = plan(root, env)
    assert states["llama/sm90/tp1-pp1"]["reasons"] == ["build.max_batch_size 64 -> 16"]
    assert _run(root, env) == LLAMA_SM90
    assert _converted(root) == converted
    assert {p: (p / "manifest.json").stat().st_mtime_ns for p in converted} == stamps


def test_toolchain_bump_makes_everything_stale(project, standins):
    root, env = project
    env2 = {**standins(trtllm_version="1.2.2"), "STANDIN_TRTLLM_LOG": env["STANDIN_TRTLLM_LOG"]}
    states = plan(root, env2)
    assert {k for k, v in states.items() if v["state"] == "stale"} == ALL_SM90
    assert "toolchain.tensorrt_llm 1.2.1 -> 1.2.2" in states["mistral/sm90/tp1-pp1"]["reasons"]
    assert _run(root, env2) == ALL_SM90


def test_unsupported_trtllm_version_is_a_clear_block(project, standins):
    root, _ = project
    env = standins(trtllm_version="1.3.0")
    states = plan(root, env)
    reason = states["mistral/sm90/tp1-pp1"]["reasons"][0]
    assert states["mistral/sm90/tp1-pp1"]["state"] == "blocked"
    assert "1.3.0" in reason and "trtllm-build" in reason and "<1.3" in reason


def test_deleting_doit_db_or_copying_the_tree_rebuilds_nothing(project, tmp_path):
    root, env = project
    for p in root.glob(".doit.db*"):
        p.unlink()
    assert _run(root, env) == set()
    copy = tmp_path / "elsewhere"
    shutil.copytree(root, copy, symlinks=True)
    shutil.rmtree(copy / ".buildlib")  # no stat cache, no converted checkpoints
    for p in copy.glob(".doit.db*"):
        p.unlink()
    assert _run(copy, env) == set()
    assert {k for k, v in plan(copy, env).items() if v["state"] == "fresh"} == ALL_SM90


def test_altered_output_is_stale(project):
    root, env = project
    engine = root / "engines/mistral/sm90/tp1-pp1/rank0.engine"
    data = bytearray(engine.read_bytes())
    data[100] ^= 0xFF
    engine.write_bytes(bytes(data))
    states = plan(root, env)
    assert states["mistral/sm90/tp1-pp1"]["reasons"] == ["output rank0.engine altered"]
    assert _run(root, env) == {"mistral/sm90/tp1-pp1"}


def test_crash_mid_build_leaves_no_engine_that_looks_fresh(project):
    root, env = project
    (root / "models.yaml").write_text(MODELS.replace("max_batch_size: 64", "max_batch_size: 32"))
    crash = {**env, "STANDIN_TRTLLM_CRASH_AFTER_RANK": "0"}
    r = doit(root, "build:llama/sm90/tp2-pp1", env=crash)
    assert r.returncode != 0
    assert "killed by SIGKILL" in r.stdout + r.stderr
    logs = re.findall(r"full log: (\S+)", r.stdout + r.stderr)
    assert logs and all(Path(p).is_file() for p in logs)  # the message names the log that is kept
    edir = root / "engines/llama/sm90/tp2-pp1"
    # The old engine is untouched (still describes max_batch_size 64), and it is stale.
    assert json.loads((edir / "manifest.json").read_text())["fields"]["build"]["max_batch_size"] == 64
    assert plan(root, env)["llama/sm90/tp2-pp1"]["state"] == "stale"
    assert not list(edir.parent.glob(".tp2-pp1.tmp-*"))
    assert (edir.parent / ".tp2-pp1.failed.log").exists()
    assert _run(root, env, "build:llama/sm90/tp2-pp1") == {"llama/sm90/tp2-pp1"}
    assert plan(root, env)["llama/sm90/tp2-pp1"]["state"] == "unvalidated"  # built; its validation has not run
    assert _run(root, env, "validate:llama/sm90/tp2-pp1") == set()
    assert plan(root, env)["llama/sm90/tp2-pp1"]["state"] == "fresh"


def test_killed_doit_run_leaves_no_engine_that_looks_fresh(tmp_path, standins):
    import signal
    import subprocess
    import sys

    root = tmp_path / "repo"
    root.mkdir()
    write_hf_checkpoint(root / "ckpt/llama", shards=2, seed=3)
    (root / "models.yaml").write_text(MODELS.split("  - name: mistral")[0])
    (root / "pyproject.toml").write_text(LOADER_PYPROJECT)
    fifo = tmp_path / "started"
    os.mkfifo(fifo)
    env = {**standins(), "STANDIN_TRTLLM_STARTED_FIFO": str(fifo)}
    proc = subprocess.Popen([sys.executable, "-m", "doit", "build:llama/sm90/tp2-pp1"], cwd=root, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    with open(fifo) as f:  # blocks until the stand-in trtllm-build has started writing
        f.read()
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    edir = root / "engines/llama/sm90/tp2-pp1"
    assert not (edir / "manifest.json").exists()
    assert plan(root, standins())["llama/sm90/tp2-pp1"]["state"] == "missing"


def test_quantized_variants_convert_and_build(tmp_path, standins):
    """fp8 (ModelOpt calibration on a GPU, via the model class's quantize()) and int4 weight-only
    (from_hugging_face on CPU) both reach the checkpoint config and the engine key."""
    root = tmp_path / "repo"
    root.mkdir()
    write_hf_checkpoint(root / "ckpt/llama", shards=2, seed=5)
    (root / "models.yaml").write_text(
        "defaults: {backend: trtllm, archs: [sm90], build: {max_batch_size: 8}}\n"
        "models:\n"
        "  - {name: fp8, checkpoint: ckpt/llama, quantization: {algo: fp8, kv_cache: fp8}}\n"
        "  - {name: int4, checkpoint: ckpt/llama, quantization: int4_wo}\n")
    (root / "pyproject.toml").write_text(LOADER_PYPROJECT)
    env = standins()
    r = doit(root, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    states = plan(root, env)
    assert {v["state"] for v in states.values()} == {"fresh"}
    quant = {}
    for name in ("fp8", "int4"):
        m = json.loads((root / f"engines/{name}/sm90/tp1-pp1/manifest.json").read_text())
        quant[name] = m["fields"]["convert"]["quantization"]
        cfg = json.loads((root / f"engines/{name}/sm90/tp1-pp1/config.json").read_text())
        assert cfg["pretrained_config"]["quantization"]["quant_algo"] == quant[name]["algo"]
    assert quant == {"fp8": {"algo": "FP8", "kv_cache": "FP8"}, "int4": {"algo": "W4A16", "kv_cache": None}}
