"""Two clones sharing one engine store, through the real doit CLI: the second builds nothing."""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import pytest

from tests.conftest import built_engines, doit, plan, write_project

MODELS = """\
defaults: {backend: trtllm, archs: [sm90], build: {max_batch_size: 8}}
models:
  - name: llama
    checkpoint: ckpt/llama
    parallel: [{tp: 1, pp: 1}, {tp: 2, pp: 1}]
  - name: mistral
    checkpoint: ckpt/mistral
"""
ENGINES = {"llama/sm90/tp1-pp1", "llama/sm90/tp2-pp1", "mistral/sm90/tp1-pp1"}


def _clone(root: Path) -> Path:
    """What a fresh CI checkout has: models.yaml, pyproject.toml and the checkpoints; no engines."""
    return write_project(root, MODELS, {"llama": {"shards": 2, "seed": 1},
                                        "mistral": {"shards": 2, "seed": 2, "arch": "MistralForCausalLM"}})


@pytest.fixture(params=["dir", "s3"])
def store_url(request, tmp_path: Path) -> str:
    if request.param == "dir":
        (tmp_path / "store").mkdir()
        return str(tmp_path / "store")
    request.getfixturevalue("s3_env")
    import boto3

    bucket = f"engines-{uuid.uuid4().hex[:12]}"
    import os

    boto3.client("s3", endpoint_url=os.environ["BUILDLIB_S3_ENDPOINT"]).create_bucket(Bucket=bucket)
    return f"s3://{bucket}/fleet"


def test_second_clone_restores_instead_of_building(tmp_path: Path, standins, store_url: str):
    env = {**standins(), "BUILDLIB_STORE": store_url}
    first, second = _clone(tmp_path / "ci-1"), _clone(tmp_path / "ci-2")
    r = doit(first, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert set(built_engines(env)) == ENGINES
    assert r.stdout.count("pushed ") == 3
    before = plan(second, env)
    assert {k: (v["state"], v["store"]) for k, v in before.items()} == {e: ("missing", True) for e in ENGINES}
    text = doit(second, "plan", env=env).stdout.splitlines()  # the text plan says so too
    assert text[-2] == "forecast  nothing to build", text  # a restore costs no GPU time
    assert text[-3].startswith("store    entries of ") and "not authenticated" in text[-3], text  # no policy here
    assert all("the store has it: `doit` restores it instead of building" in line for line in text[:-3]), text
    assert text[-1] == "3 engines: 3 missing (3 restorable from the store)", text
    n = len(built_engines(env))
    r = doit(second, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert len(built_engines(env)) == n  # nothing built
    assert r.stdout.count("restored ") == 3
    after = plan(second, env)
    assert {k for k, v in after.items() if v["state"] == "fresh"} == ENGINES
    for e in ENGINES:  # same key, same bytes: the manifests agree
        m1 = json.loads((first / "engines" / e / "manifest.json").read_text())
        m2 = json.loads((second / "engines" / e / "manifest.json").read_text())
        assert m1["key"] == m2["key"] and m1["outputs"] == m2["outputs"]
        assert json.loads((second / "engines" / e / "validation.json").read_text())["ok"] is True


def test_corrupt_store_entry_is_detected_and_rebuilt(tmp_path: Path, standins):
    store = tmp_path / "store"
    store.mkdir()
    env = {**standins(), "BUILDLIB_STORE": str(store)}
    first, second = _clone(tmp_path / "ci-1"), _clone(tmp_path / "ci-2")
    assert doit(first, env=env).returncode == 0
    key = plan(first, env)["mistral/sm90/tp1-pp1"]["key"]
    victim = store / key / "rank0.engine"
    data = bytearray(victim.read_bytes())
    data[10] ^= 0xFF
    victim.write_bytes(bytes(data))
    n = len(built_engines(env))
    r = doit(second, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "corrupt" in r.stdout and "rank0.engine" in r.stdout
    assert built_engines(env)[n:] == ["mistral/sm90/tp1-pp1"]  # only the corrupt one is rebuilt
    assert r.stdout.count("restored ") == 2
    assert {k for k, v in plan(second, env).items() if v["state"] == "fresh"} == ENGINES
    shutil.rmtree(tmp_path / "ci-3", ignore_errors=True)
    third = _clone(tmp_path / "ci-3")
    r = doit(third, env=env)  # the rebuilt engine was pushed again: everything restores now
    assert r.stdout.count("restored ") == 3, r.stdout


def test_host_without_the_arch_restores_and_does_not_fail(tmp_path: Path, standins):
    """A CPU-only runner (no GPU at all) restores sm90 engines from the store; validation of an
    engine it cannot run is reported as needing an sm90 host, not failed."""
    store = tmp_path / "store"
    store.mkdir()
    gpu_env = {**standins(), "BUILDLIB_STORE": str(store)}
    assert doit(_clone(tmp_path / "gpu-box"), env=gpu_env).returncode == 0
    cpu_env = {**standins(gpus=[]), "BUILDLIB_STORE": str(store), "STANDIN_TRTLLM_LOG": gpu_env["STANDIN_TRTLLM_LOG"]}
    laptop = _clone(tmp_path / "laptop")
    n = len(built_engines(gpu_env))
    r = doit(laptop, env=cpu_env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert len(built_engines(gpu_env)) == n
    assert r.stdout.count("restored ") == 3
    assert r.stdout.count("needs an sm90 host; not validated here") == 3
    # Restored and intact, but never validated where it could run: never shown as good, nor as work here.
    states = plan(laptop, cpu_env).values()
    assert {(v["state"], tuple(v["reasons"])) for v in states} == {("blocked", ("needs an sm90 host",
                                                                               "not validated yet"))}
    assert doit(laptop, "plan", "--check", env=cpu_env).returncode == 0
    # an empty store: the build tasks still run (they look in the store), then the run sums them up
    empty = tmp_path / "empty-store"
    empty.mkdir()
    r = doit(_clone(tmp_path / "laptop2"), env={**cpu_env, "BUILDLIB_STORE": str(empty)})
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("needs an sm90 host; not built here") == 3
    assert "3 engines not built here, needs an sm90 host: " in r.stdout
