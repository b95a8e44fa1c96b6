"""Refit (#14) on the TensorRT-LLM path, through the real doit CLI with the stand-ins: a weights-only change to a
`refit: true` model runs trtllm-refit and no trtllm-build; a structural change rebuilds; plan says which."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from tests.conftest import (
    LOADER_PYPROJECT,
    copy_built,
    doit,
    plan,
    trtllm_log,
    write_hf_checkpoint,
    write_safetensors,
)

MODELS = """\
defaults:
  backend: trtllm
  dtype: float16
  archs: [sm90]
  build: {max_batch_size: 8, max_input_len: 1024, max_seq_len: 2048}
models:
  - name: llama
    checkpoint: ckpt/llama
    refit: true
    parallel: [{tp: 1, pp: 1}, {tp: 2, pp: 1}]
  - name: plain
    checkpoint: ckpt/plain
"""


def refit_log(env: dict[str, str]) -> list[dict]:
    p = Path(env["STANDIN_TRTLLM_REFIT_LOG"])
    return [json.loads(line) for line in p.read_text().splitlines()] if p.exists() else []


def new_weights(ckpt: Path, seed: int) -> None:
    """The same tensors (names, dtypes, shapes) with other bytes: a fine-tune."""
    for shard in sorted(ckpt.glob("*.safetensors")):
        header_len = int.from_bytes(shard.read_bytes()[:8], "little")
        header = json.loads(shard.read_bytes()[8:8 + header_len])
        write_safetensors(shard, {name: bytes((seed * 7 + j) % 251 for j in range(info["shape"][0]))
                                  for name, info in header.items()})


@pytest.fixture(scope="module")
def _built(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    from tests.conftest import H100
    from tests.standins import standin_env

    base = tmp_path_factory.mktemp("refit")
    root = base / "repo"
    root.mkdir()
    write_hf_checkpoint(root / "ckpt/llama", shards=2, seed=1)
    write_hf_checkpoint(root / "ckpt/plain", shards=1, seed=2)
    (root / "models.yaml").write_text(MODELS)
    (root / "pyproject.toml").write_text(LOADER_PYPROJECT)
    env = {**standin_env(base / "standins", gpus=[H100, H100]), "STANDIN_TRTLLM_LOG": str(base / "build.log"),
           "STANDIN_TRTLLM_REFIT_LOG": str(base / "refit.log")}
    r = doit(root, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    return root, env


@pytest.fixture
def project(tmp_path: Path, _built) -> tuple[Path, dict[str, str]]:
    return copy_built(*_built, tmp_path, logs=("STANDIN_TRTLLM_LOG", "STANDIN_TRTLLM_REFIT_LOG"))


def manifest(root: Path, engine: str) -> dict:
    return json.loads((root / "engines" / engine / "manifest.json").read_text())


def test_a_refit_model_is_built_with_strip_plan_and_refitted_into_a_runnable_engine(project):
    root, env = project
    llama = [r["argv"] for r in trtllm_log(env) if "/llama/" in " ".join(r["argv"])]
    plain = [r["argv"] for r in trtllm_log(env) if "/plain/" in " ".join(r["argv"])]
    assert llama and all("--strip_plan" in a for a in llama)
    assert plain and not any("--strip_plan" in a for a in plain)
    # the stripped plan is refitted with its own checkpoint: one trtllm-refit per refittable build
    assert len(refit_log(env)) == len(llama) == 2
    m = manifest(root, "llama/sm90/tp1-pp1")
    assert m["fields"]["refit"] is True and m["fields"]["build"]["strip_plan"] is True
    assert "refit" not in manifest(root, "plain/sm90/tp1-pp1")["fields"]
    assert m["structure"]["key"] and m["structure"]["files"]["config.json"]
    states = plan(root, env)
    assert {e: s["state"] for e, s in states.items()} == dict.fromkeys(states, "fresh")
    assert all((root / "engines" / e / "validation.json").is_file() for e in states)  # they ran


def test_weights_only_change_is_refitted_with_no_trtllm_build(project):
    root, env = project
    old = manifest(root, "llama/sm90/tp1-pp1")
    n_builds, n_refits = len(trtllm_log(env)), len(refit_log(env))
    new_weights(root / "ckpt/llama", seed=5)
    states = plan(root, env)
    assert states["llama/sm90/tp1-pp1"]["state"] == "stale"
    assert states["llama/sm90/tp1-pp1"]["reasons"] == ["weights only: refit"]
    text = doit(root, "plan", env=env).stdout
    assert re.search(r"stale +llama/sm90/tp1-pp1  \(weights only: refit\)", text), text
    assert "forecast  sm90: no builds, 2 refits (weights only, not forecast as builds)" in text, text
    r = doit(root, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert len(trtllm_log(env)) == n_builds  # no trtllm-build at all
    refits = refit_log(env)[n_refits:]
    assert len(refits) == 2
    engine_dirs = sorted(a["argv"][a["argv"].index("--engine_dir") + 1] for a in refits)
    assert engine_dirs == sorted(str(root / "engines/llama/sm90" / p) for p in ("tp1-pp1", "tp2-pp1"))
    new = manifest(root, "llama/sm90/tp1-pp1")
    assert new["built"]["how"] == "refit" and new["built"]["refit_of"] == old["key"]
    assert new["key"] != old["key"] and new["structure"]["key"] == old["structure"]["key"]
    assert "2 refitted, 2 validated" in r.stdout, r.stdout
    assert {s["state"] for s in plan(root, env).values()} == {"fresh"}
    # validated through the runtime: it read the refitted plan
    v = json.loads((root / "engines/llama/sm90/tp1-pp1/validation.json").read_text())
    assert v["ok"] is True and v["key"] == new["key"]


def test_refitted_engine_generates_what_a_build_from_the_new_weights_generates(project, tmp_path):
    root, env = project
    new_weights(root / "ckpt/llama", seed=9)
    assert doit(root, env=env).returncode == 0
    refitted = json.loads((root / "engines/llama/sm90/tp1-pp1/validation.json").read_text())
    fresh = tmp_path / "fresh"
    shutil.copytree(root, fresh, ignore=shutil.ignore_patterns("engines", ".buildlib", ".doit.db*"))
    r = doit(fresh, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    built = json.loads((fresh / "engines/llama/sm90/tp1-pp1/validation.json").read_text())
    assert manifest(fresh, "llama/sm90/tp1-pp1")["built"].get("how") is None  # a full build there
    assert refitted["tokens"] == built["tokens"]


def test_structural_change_rebuilds_and_plan_names_the_field(project):
    root, env = project
    cfg = root / "ckpt/llama/config.json"
    config = json.loads(cfg.read_text())
    config["num_hidden_layers"] = 3
    cfg.write_text(json.dumps(config))
    states = plan(root, env)
    assert states["llama/sm90/tp1-pp1"]["reasons"] == ["config.json num_hidden_layers 2 -> 3"]
    n_builds, n_refits = len(trtllm_log(env)), len(refit_log(env))
    r = doit(root, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert len(trtllm_log(env)) == n_builds + 2  # rebuilt (and each stripped build refitted with its own weights)
    assert all(a["argv"][a["argv"].index("--engine_dir") + 1].endswith("-stripped") for a in refit_log(env)[n_refits:])
    assert manifest(root, "llama/sm90/tp1-pp1")["built"].get("how") is None


def test_weights_only_change_without_refit_rebuilds_and_says_weights_only(project):
    root, env = project
    new_weights(root / "ckpt/plain", seed=3)
    reasons = plan(root, env)["plain/sm90/tp1-pp1"]["reasons"]
    assert reasons == ["checkpoint model-00001-of-00001.safetensors changed (weights only)"]
    n_builds = len(trtllm_log(env))
    assert doit(root, env=env).returncode == 0
    assert len(trtllm_log(env)) == n_builds + 1


def test_failed_refit_falls_back_to_a_full_build_saying_why(project):
    root, env = project
    new_weights(root / "ckpt/llama", seed=4)
    # the engine here is damaged after planning: it cannot be refitted, so it is built
    (root / "engines/llama/sm90/tp1-pp1/rank0.engine").write_bytes(b"garbage")
    n_builds = len(trtllm_log(env))
    r = doit(root, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "refit of llama/sm90/tp1-pp1 failed (the engine in" in r.stdout and "building it instead" in r.stdout
    assert len(trtllm_log(env)) == n_builds + 1  # only the damaged one was built; tp2 was refitted
    assert manifest(root, "llama/sm90/tp1-pp1")["built"].get("how") is None
    assert manifest(root, "llama/sm90/tp2-pp1")["built"]["how"] == "refit"
    assert "1 built, 1 refitted" in r.stdout


def test_refit_from_the_store_on_a_host_without_the_old_engine(tmp_path, standins):
    """CI: one runner built the refittable engine and pushed it; after a fine-tune another runner with no engines
    refits the store's engine instead of building."""
    store = tmp_path / "store"
    store.mkdir()
    a, b = tmp_path / "a", tmp_path / "b"
    for root in (a, b):
        write_hf_checkpoint(root / "ckpt/llama", shards=1, seed=1)
        (root / "models.yaml").write_text(f"store: {store}\n" + MODELS.split("  - name: plain")[0]
                                          .replace("parallel: [{tp: 1, pp: 1}, {tp: 2, pp: 1}]", ""))
        (root / "pyproject.toml").write_text(LOADER_PYPROJECT)
    env = {**standins(), "STANDIN_TRTLLM_REFIT_LOG": str(tmp_path / "refit.log")}
    assert doit(a, env=env).returncode == 0
    new_weights(b / "ckpt/llama", seed=8)
    n_builds = len(trtllm_log(env))
    text = doit(b, "plan", env=env).stdout
    assert "the store has an engine of its structure: refit" in text, text
    r = doit(b, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert len(trtllm_log(env)) == n_builds and "1 refitted" in r.stdout
    m = manifest(b, "llama/sm90/tp1-pp1")
    assert m["built"]["refit_of"] == manifest(a, "llama/sm90/tp1-pp1")["key"]
    assert not list((b / "engines/llama/sm90").glob(".*tmp-*"))  # the pulled source is gone


def test_refit_with_strip_plan_false_is_refused_at_plan_time(tmp_path, standins):
    write_hf_checkpoint(tmp_path / "ckpt/llama")
    (tmp_path / "models.yaml").write_text(MODELS.replace("refit: true", "refit: true\n    build: {strip_plan: false}"))
    (tmp_path / "pyproject.toml").write_text(LOADER_PYPROJECT)
    r = doit(tmp_path, "plan", env=standins())
    assert r.returncode == 2 and "models.yaml:10" in r.stderr and "strip_plan" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_a_structure_record_is_trusted_only_if_it_recomputes(tmp_path):
    """A manifest (a store entry's too) vouches for a structure key only if its fields and file entries hash to it:
    an edited record cannot make a structural change pass for a weights-only one."""
    from buildlib.core.hashing import tree_digest
    from buildlib.core.structure import checkpoint_structure, recorded_key, structure_reasons, structure_record

    ckpt = write_hf_checkpoint(tmp_path / "ckpt", shards=1)
    fields = {"backend": "trtllm", "checkpoint": "x", "build": {"max_batch_size": 8}}
    rec = structure_record(fields, checkpoint_structure(ckpt, tree_digest(ckpt).files))
    assert recorded_key(fields, rec) == rec["key"]
    assert recorded_key({**fields, "build": {"max_batch_size": 9}}, rec) is None  # other fields
    edited = {**rec, "files": {**rec["files"], "config.json": [1, "0" * 32]}}
    assert recorded_key(fields, edited) is None
    assert recorded_key(fields, {"key": rec["key"]}) is None
    new_weights(ckpt, seed=3)  # bytes only: the structure is the same
    assert checkpoint_structure(ckpt, tree_digest(ckpt).files).digest == rec["digest"]
    write_safetensors(ckpt / "model-00001-of-00001.safetensors", {"other.name": b"x" * 16})
    got = checkpoint_structure(ckpt, tree_digest(ckpt).files)
    assert structure_reasons(rec, got) == \
        ["checkpoint model-00001-of-00001.safetensors tensors changed (names, dtypes, shapes or header metadata)"]
