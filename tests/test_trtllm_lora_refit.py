"""A `refit: true` engine with a LoRA adapter keeps its adapter through every refit (#25 item 4), through doit.

builder.py Engine.save (1.2.x) copies each adapter into the engine dir (lora/<i>) and points the engine's config at
the copy; trtllm-refit (commands/refit.py) writes config.json and the *.engine files only. A refittable build is a
stripped build refitted into a second dir, so without carrying lora/ the engine loses its adapter on its first
build, and again on every weights-only refit: ModelRunner.from_dir then fails to load it.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import LOADER_PYPROJECT, doit, plan, trtllm_log, write_hf_checkpoint
from tests.test_refit import new_weights, refit_log

MODELS = """\
defaults: {backend: trtllm, dtype: float16, archs: [sm90], build: {max_batch_size: 8}}
models:
  - name: llama
    checkpoint: ckpt/llama
    refit: true
    parallel: [{tp: 1, pp: 1}, {tp: 2, pp: 1}]
    build: {lora_plugin: auto, lora_dir: [lora/a], lora_target_modules: [attn_q, attn_v]}
"""


def project(root: Path, models: str = MODELS) -> Path:
    write_hf_checkpoint(root / "ckpt/llama", shards=2, seed=3)
    (root / "lora/a").mkdir(parents=True)
    (root / "lora/a/adapter_config.json").write_text(json.dumps({"r": 8, "target_modules": ["q_proj", "v_proj"]}))
    (root / "lora/a/adapter_model.safetensors").write_bytes(b"adapter bytes")
    (root / "models.yaml").write_text(models)
    (root / "pyproject.toml").write_text(LOADER_PYPROJECT)
    return root


def test_refit_engine_with_lora_builds_refits_and_validates(tmp_path, standins):
    root = project(tmp_path / "repo")
    env = {**standins(), "STANDIN_TRTLLM_REFIT_LOG": str(tmp_path / "refit.log")}
    r = doit(root, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.splitlines()[-1] == "2 built, 2 validated", r.stdout
    for eid in ("llama/sm90/tp1-pp1", "llama/sm90/tp2-pp1"):
        edir = root / "engines" / eid
        config = json.loads((edir / "config.json").read_text())
        assert config["build_config"]["lora_config"]["lora_dir"] == ["lora/0"]  # Engine.save points at its copy
        assert (edir / "lora/0/adapter_model.safetensors").read_bytes() == b"adapter bytes"
        outputs = json.loads((edir / "manifest.json").read_text())["outputs"]
        assert {"lora/0/adapter_config.json", "lora/0/adapter_model.safetensors"} <= outputs.keys()
        assert json.loads((edir / "validation.json").read_text())["ok"] is True
    builds = len(trtllm_log(env))
    new_weights(root / "ckpt/llama", seed=9)  # a fine-tune: weights only
    assert {s["state"] for s in plan(root, env).values()} == {"stale"}
    r = doit(root, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.splitlines()[-1] == "2 refitted, 2 validated", r.stdout
    assert len(trtllm_log(env)) == builds  # no trtllm-build
    assert len(refit_log(env)) == 4  # 2 strip-then-refit builds, 2 weights-only refits
    for eid in ("llama/sm90/tp1-pp1", "llama/sm90/tp2-pp1"):
        edir = root / "engines" / eid
        assert json.loads((edir / "manifest.json").read_text())["built"]["how"] == "refit"
        assert (edir / "lora/0/adapter_config.json").is_file()
    assert {s["state"] for s in plan(root, env).values()} == {"fresh"}


def test_an_engine_missing_its_adapter_copy_is_not_fresh_and_does_not_load(tmp_path, standins):
    """The copy is part of the engine: removing it makes the engine stale (a rebuild), and the runtime refuses it."""
    root = project(tmp_path / "repo", MODELS.replace("refit: true", "refit: false"))
    env = standins()
    assert doit(root, env=env).returncode == 0
    edir = root / "engines/llama/sm90/tp1-pp1"
    (edir / "lora/0/adapter_config.json").unlink()
    st = plan(root, env)["llama/sm90/tp1-pp1"]
    assert st["state"] == "stale" and "output lora/0/adapter_config.json missing" in st["reasons"], st


def test_refit_with_fast_build_is_refused_at_plan_time(tmp_path, standins):
    """--fast_build keeps weights in rank<N>_managed_weights.safetensors, which trtllm-refit does not update."""
    root = project(tmp_path / "repo", MODELS.replace("lora_plugin: auto,", "lora_plugin: auto, fast_build: true,"))
    r = doit(root, "plan", env=standins())
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "models.yaml:7: models[0].build.fast_build: refit: true cannot keep its engines current with fast_build" \
        in r.stderr, r.stderr
