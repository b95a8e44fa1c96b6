"""Triton model repositories for trtllm engines (issues #13, #25): the inflight_batcher_llm templates filled from the
engine's config.json and models.yaml as the release's fill_template.py fills them (an optional string parameter
nobody set stays `${name}`), contradictions refused, every config.pbtxt a valid Triton ModelConfig that the
backend and the Python models load (tests/standins/triton/server.py), stale with the engine."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import LOADER_PYPROJECT, doit, write_hf_checkpoint
from tests.standins.triton import server

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
        assert 'backend: "tensorrtllm"' in trt and "max_batch_size: 8\n" in trt
        assert f'string_value: "{root / "engines" / engine}"' in trt  # gpt_model_path: the engine dir
        assert f'string_value: "{ids}"' in trt and 'string_value: "0.85"' in trt  # gpu_device_ids; models.yaml
        assert f'string_value: "{root / "ckpt/llama"}"' in trt  # tokenizer_dir: the checkpoint built from
        # an optional parameter nobody set stays as fill_template.py leaves it; the backend reads it as unset
        assert 'string_value: "${lora_prefetch_dir}"' in trt and 'string_value: "${guided_decoding_backend}"' in trt
        assert 'string_value: "inflight_fused_batching"' in trt and "data_type: TYPE_FP32" in trt
        for model in ("preprocessing", "postprocessing", "ensemble", "tensorrt_llm_bls"):
            assert "max_batch_size: 8\n" in config(root, engine, model), model
        server.load(root / "triton" / engine)  # every config.pbtxt a Triton ModelConfig, every model loads
        assert (root / "triton" / engine / "tensorrt_llm/1/model.py").is_file()
        stamp = json.loads((root / "triton" / engine / "triton.json").read_text())
        manifest = json.loads((root / "engines" / engine / "manifest.json").read_text())
        assert stamp["engine_key"] == manifest["key"] and stamp["schema_checked"] is True
        assert "xgrammar_tokenizer_info_path" in stamp["left_unset"]["tensorrt_llm"]
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


def test_the_backend_and_the_python_models_load_every_repository(project):
    """What tritonserver does with the repository (tests/standins/triton/server.py): each config.pbtxt parses as
    Triton's ModelConfig, the C++ backend reads its parameters (tokenizer_dir, xgrammar_tokenizer_info_path and
    guided_decoding_backend have no fallback: a dropped block is "Cannot find parameter with name"), and the Python
    models' initialize() reads theirs (preprocessing indexes multimodal_model_path: a dropped block is a KeyError)."""
    root, env = project
    assert doit(root, env=env).returncode == 0
    for engine, ids in (("llama/sm90/tp1-pp1", [[0]]), ("llama/sm90/tp2-pp1", [[0, 1]])):
        loaded = server.load(root / "triton" / engine)
        trt = loaded["tensorrt_llm"]
        assert trt["gpu_device_ids"] == ids and trt["gpt_model_type"] == "inflight_fused_batching"
        assert trt["gpt_model_path"] == str(root / "engines" / engine) and trt["guided_decoding"] is None
        assert trt["kv_cache_free_gpu_mem_fraction"] == 0.85 and trt["lora_cache_max_adapter_size"] is None
        assert loaded["preprocessing"]["is_multimodal"] is False and loaded["preprocessing"]["add_special_tokens"]
        assert loaded["tensorrt_llm_bls"]["llm_model_name"] == "tensorrt_llm"
        assert loaded["tensorrt_llm_bls"]["draft_llm_model_name"] is None
        assert loaded["ensemble"] == ["preprocessing", "tensorrt_llm", "postprocessing"]


def test_a_repository_triton_would_refuse_fails_the_task(project):
    """A template Triton's ModelConfig schema refuses (here a field the proto does not have) fails the triton task
    with the file and the line, instead of shipping a repository tritonserver will not load."""
    root, env = project
    cfg = root / "triton-templates/postprocessing/config.pbtxt"
    cfg.write_text(cfg.read_text().replace("dynamic_batching {}", "dynamic_batching {}\nmax_batch_sise: 4"))
    r = doit(root, env=env)
    assert r.returncode == 1, r.stdout + r.stderr
    out = r.stdout + r.stderr
    assert "postprocessing/config.pbtxt is not a Triton ModelConfig" in out and "max_batch_sise" in out, out
    assert not list((root / "triton").glob("llama/sm90/*/triton.json")) and "Traceback" not in out
