"""Triton model repositories for trtllm engines (issue #13 item 4): every placeholder of the inflight_batcher_llm
templates filled from the engine's config.json and models.yaml, contradictions refused, stale with the engine."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import LOADER_PYPROJECT, doit, write_hf_checkpoint

TEMPLATES = Path(__file__).parent / "standins/triton/inflight_batcher_llm"


@pytest.fixture
def project(tmp_path: Path, standins) -> tuple[Path, dict[str, str]]:
    root = tmp_path / "repo"
    write_hf_checkpoint(root / "ckpt/llama", shards=1, seed=11)
    shutil.copytree(TEMPLATES, root / "triton-templates")
    (root / "pyproject.toml").write_text(LOADER_PYPROJECT)
    write_models(root)
    return root, standins()


def write_models(root: Path, mbs: int = 8, triton: str = "{kv_cache_free_gpu_mem_fraction: 0.85}") -> None:
    (root / "models.yaml").write_text(
        "triton_templates: triton-templates\n"
        f"defaults: {{backend: trtllm, build: {{max_batch_size: {mbs}}}}}\n"
        "models:\n"
        f"  - {{name: llama, checkpoint: ckpt/llama, archs: [sm90], parallel: [{{tp: 1}}, {{tp: 2}}],\n"
        f"     triton: {triton}}}\n")


def config(root: Path, engine: str, model: str) -> str:
    return (root / "triton" / engine / model / "config.pbtxt").read_text()


def test_doit_writes_a_filled_repository_per_engine_and_keeps_it_fresh(project):
    root, env = project
    r = doit(root, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.splitlines()[-1] == "2 built, 2 validated", r.stdout
    for engine, ids in (("llama/sm90/tp1-pp1", "0"), ("llama/sm90/tp2-pp1", "0,1")):
        trt = config(root, engine, "tensorrt_llm")
        assert "${" not in trt and 'backend: "tensorrtllm"' in trt and "max_batch_size: 8\n" in trt
        assert f'string_value: "{root / "engines" / engine}"' in trt  # gpt_model_path: the engine dir
        assert f'string_value: "{ids}"' in trt and 'string_value: "0.85"' in trt  # gpu_device_ids; models.yaml
        assert f'string_value: "{root / "ckpt/llama"}"' in trt  # tokenizer_dir: the checkpoint built from
        assert "lora_prefetch_dir" not in trt and "max_beam_width" in trt  # unset optional parameters dropped
        assert 'string_value: "inflight_fused_batching"' in trt and "data_type: TYPE_FP32" in trt
        for model in ("preprocessing", "postprocessing", "ensemble", "tensorrt_llm_bls"):
            text = config(root, engine, model)
            assert "${" not in text and "max_batch_size: 8\n" in text, (model, text)
        assert (root / "triton" / engine / "tensorrt_llm/1/model.py").is_file()
        stamp = json.loads((root / "triton" / engine / "triton.json").read_text())
        manifest = json.loads((root / "engines" / engine / "manifest.json").read_text())
        assert stamp["engine_key"] == manifest["key"]
    listed = doit(root, "list", env=env).stdout.split()
    assert "triton" in listed and "triton:llama/sm90/tp2-pp1" in listed
    r = doit(root, env=env)
    assert r.returncode == 0 and r.stdout.splitlines()[-1] == "nothing to do: 2 up to date", r.stdout
    # the engine changes: it is rebuilt, and its repository follows
    write_models(root, mbs=16)
    r = doit(root, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "max_batch_size: 16\n" in config(root, "llama/sm90/tp1-pp1", "ensemble")
    # a value changes: only the repositories are rewritten
    write_models(root, mbs=16, triton="{kv_cache_free_gpu_mem_fraction: 0.5, decoupled_mode: true}")
    r = doit(root, env=env)
    assert r.returncode == 0 and "building" not in r.stdout, r.stdout
    trt = config(root, "llama/sm90/tp1-pp1", "tensorrt_llm")
    assert 'string_value: "0.5"' in trt and "decoupled: true" in trt


BAD_VALUES = [
    ("{triton_max_batch_size: 64}", "triton_max_batch_size 64 contradicts the engine (built with max_batch_size 8"),
    ("{kv_cache_free_gpu_mem_fracton: 0.9}",
     "kv_cache_free_gpu_mem_fracton (did you mean kv_cache_free_gpu_mem_fraction?)"),
    ("{engine_dir: /elsewhere}", "engine_dir is the engine's own"),
]


def test_a_value_that_contradicts_the_engine_or_no_template_has_fails_and_writes_nothing(project):
    root, env = project
    for triton, message in BAD_VALUES:  # one project: its engines are built by the first run only
        write_models(root, triton=triton)
        r = doit(root, env=env)
        assert r.returncode == 1 and message in r.stdout + r.stderr, r.stdout + r.stderr
        assert not list((root / "triton").glob("llama/sm90/*/triton.json"))
        assert "Traceback" not in r.stdout + r.stderr


def test_a_placeholder_nothing_fills_fails_the_task(project):
    root, env = project
    cfg = root / "triton-templates/ensemble/config.pbtxt"
    cfg.write_text(cfg.read_text().replace('dims: [ -1, -1, -1 ]', 'dims: [ -1, ${custom_dim} ]', 1))
    r = doit(root, env=env)
    assert r.returncode == 1 and "ensemble/config.pbtxt still has ${custom_dim}" in r.stdout + r.stderr
