"""The TensorRT-LLM path against what the real 1.2.x accepts (docs/tensorrt-llm-contract.md), through `doit`.

Each test names the finding of issue #10 it pins; the stand-ins are as strict as 1.2.x there.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from buildlib.backends.trtllm_options import OptionError, resolve_build_options, resolve_for_model
from tests.conftest import H100, doit, plan, snapshot, trtllm_log, write_project

HEAD = """\
defaults:
  backend: trtllm
  archs: [sm90]
  build: {max_batch_size: 8, max_seq_len: 512}
models:
"""


def project(root: Path, models: str, ckpts: dict[str, str] | None = None) -> Path:
    return write_project(root, HEAD + models, {name: {"shards": 2, "seed": 3, "arch": arch}
                                               for name, arch in (ckpts or {"llama": "LlamaForCausalLM"}).items()})


# -- 1, 2: validation hands tensors to generate and reads tokens on the first pipeline stage only --------------

@pytest.mark.parametrize("tp,pp,gpus", [(1, 1, 1), (2, 1, 2), (1, 2, 2), (2, 2, 4), (1, 3, 3)])
def test_tp_pp_engines_build_and_validate_through_doit(tmp_path, standins, tp, pp, gpus):
    entry = f"  - name: llama\n    checkpoint: ckpt/llama\n    parallel: [{{tp: {tp}, pp: {pp}}}]\n"
    root = project(tmp_path / "repo", entry)
    env = standins(gpus=[H100] * gpus)
    r = doit(root, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    eid = f"llama/sm90/tp{tp}-pp{pp}"
    v = json.loads((root / "engines" / eid / "validation.json").read_text())
    assert v["ok"] is True and len(v["tokens"]) == 4 and v["detail"] == "generated 4 tokens on rank 0"
    assert plan(root, env)[eid]["state"] == "fresh"
    assert sorted(p.name for p in (root / "engines" / eid).glob("rank*.engine")) == \
        [f"rank{r}.engine" for r in range(tp * pp)]


def test_each_pipeline_stage_gets_what_decode_regular_returns(tmp_path, standins):
    """GenerationSession.decode_regular (1.2.x), passed through by ModelRunner.generate: the first stage gets the
    output ids, the last a dict of its gathered logits ({} here), the stages between None. Before, the stand-in
    returned None on every stage but the first, as the validator expected: every pp >= 2 validation would have
    failed on a real install (a tp1-pp3 engine: ranks 0, 1, 2 are stages 0, 1, 2)."""
    from tests.standins import standin_env

    root = project(tmp_path / "repo", "  - name: llama\n    checkpoint: ckpt/llama\n    parallel: [{tp: 1, pp: 3}]\n"
                   "    validate: false\n")
    env = standins(gpus=[H100] * 3)
    assert doit(root, env=env).returncode == 0
    code = ("import sys, torch\nfrom tensorrt_llm.runtime import ModelRunner\n"
            "r = ModelRunner.from_dir(engine_dir=sys.argv[1], rank=int(sys.argv[2]))\n"
            "print(r.generate(batch_input_ids=[torch.tensor([1, 2])], max_new_tokens=2, end_id=-1, pad_id=0))\n")
    e = {**standin_env(tmp_path / "s3", gpus=[H100] * 3), "OMPI_COMM_WORLD_SIZE": "3"}
    outs = [subprocess.run([sys.executable, "-c", code, str(root / "engines/llama/sm90/tp1-pp3"), str(r)], env=e,
                           capture_output=True, text=True, timeout=120) for r in range(3)]
    assert all(o.returncode == 0 for o in outs), [o.stderr for o in outs]
    last = [o.stdout.splitlines()[-1] for o in outs]
    assert last[0].startswith("tensor(") and last[1] == "None" and last[2] == "{}"


# -- 3: kv_cache_type resolved as 1.2.x does, recorded in the key, left to the tool when unset -----------------

def test_kv_cache_type_is_left_to_trtllm_build_and_recorded(tmp_path, standins):
    root = project(tmp_path / "repo", "  - name: llama\n    checkpoint: ckpt/llama\n    validate: false\n")
    env = standins(gpus=[H100])
    assert doit(root, env=env).returncode == 0
    argv = trtllm_log(env)[-1]["argv"]
    assert "--kv_cache_type" not in argv
    m = json.loads((root / "engines/llama/sm90/tp1-pp1/manifest.json").read_text())
    assert m["fields"]["build"]["kv_cache_type"] == "paged"
    cfg = json.loads((root / "engines/llama/sm90/tp1-pp1/config.json").read_text())
    assert cfg["build_config"]["kv_cache_type"] == "PAGED"  # what the tool resolved agrees with the key


def test_kv_cache_type_follows_paged_state_for_recurrent_models():
    r = resolve_build_options({"paged_state": "disable"})
    assert resolve_for_model(r, "MambaForCausalLM")["kv_cache_type"] == "continuous"
    assert resolve_for_model(r, "RecurrentGemmaForCausalLM")["kv_cache_type"] == "continuous"
    assert resolve_for_model(r, "LlamaForCausalLM")["kv_cache_type"] == "paged"
    assert resolve_for_model(resolve_build_options({}), "MambaForCausalLM")["kv_cache_type"] == "paged"
    with pytest.raises(OptionError, match="contradicts paged_state"):
        resolve_for_model(resolve_build_options({"kv_cache_type": "continuous"}), "MambaForCausalLM")
    with pytest.raises(OptionError, match="contradicts paged_state"):
        resolve_for_model(resolve_build_options({"kv_cache_type": "paged", "paged_state": "disable"}),
                          "MambaForCausalLM")


# -- 4: what the real builder rejects is refused at plan time: exit 2, one line, nothing written --------------

REFUSED = [
    ("    build: {pp_reduce_scatter: enable}\n", "build.pp_reduce_scatter", "MixtralForCausalLM"),
    ("    build: {gemm_swiglu_plugin: fp8, use_fused_mlp: disable}\n", "build.gemm_swiglu_plugin", "use_fused_mlp"),
    ("    build: {low_latency_gemm_swiglu_plugin: fp8, use_fused_mlp: disable}\n",
     "build.low_latency_gemm_swiglu_plugin", "use_fused_mlp"),
    ("    build: {kv_cache_type: disabled}\n", "build.kv_cache_type", "validate: false"),
    ("    archs: [sm100]\n    build: {fp8_rowwise_gemm_plugin: auto}\n", "build.fp8_rowwise_gemm_plugin", "SM 100"),
    ("    quantization: int4_wo\n    build: {gemm_swiglu_plugin: fp8}\n", "build.gemm_swiglu_plugin", "W4A16"),
    ("    build: {kv_cache_type: continuous, paged_state: enable}\n", "build.kv_cache_type", "contradicts"),
]


@pytest.mark.parametrize("extra,field,why", REFUSED)
def test_combinations_the_builder_rejects_are_refused_at_plan_time(tmp_path, standins, extra, field, why):
    arch = "MambaForCausalLM" if "paged_state" in extra else "LlamaForCausalLM"
    root = project(tmp_path / "repo", "  - name: llama\n    checkpoint: ckpt/llama\n" + extra, {"llama": arch})
    env = standins(gpus=[H100])
    before = snapshot(root)
    for args in (("plan",), ()):
        r = doit(root, *args, env=env)
        assert r.returncode == 2, r.stdout + r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in r.stderr
        line = 7 + extra.count("\n")  # the build: line, the last of the entry
        assert lines[0].startswith(f"error: {root / 'models.yaml'}:{line}: models[0].{field}: "), lines[0]
        assert why in lines[0]
    assert snapshot(root) == before  # nothing written: no .buildlib, no engines, no .doit.db
    assert trtllm_log(env) == []


def test_kv_cache_disabled_without_validation_builds(tmp_path, standins):
    root = project(tmp_path / "repo", "  - name: llama\n    checkpoint: ckpt/llama\n    validate: false\n"
                   "    build: {kv_cache_type: disabled}\n")
    env = standins(gpus=[H100])
    r = doit(root, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    argv = trtllm_log(env)[-1]["argv"]
    assert argv[argv.index("--kv_cache_type") + 1] == "disabled"


@pytest.mark.parametrize("flags,message", [
    (["--pp_reduce_scatter", "enable"], "PP reduce scatter is only supported in the mixtral model"),
    (["--gemm_swiglu_plugin", "fp8", "--use_fused_mlp", "disable"], "GemmSwiGLU plugin requires --use_fused_mlp"),
])
def test_stand_in_builder_asserts_what_the_real_one_asserts(tmp_path, standins, flags, message):
    """Without the plan-time refusal, the build itself fails, after GPU time (as 1.2.x does)."""
    env = standins(gpus=[H100])
    root = project(tmp_path / "repo", "  - name: llama\n    checkpoint: ckpt/llama\n    validate: false\n")
    assert doit(root, env=env).returncode == 0
    ckpt = next(p for p in (root / ".buildlib/checkpoints").iterdir() if not p.name.startswith("."))
    r = subprocess.run(["trtllm-build", "--checkpoint_dir", str(ckpt), "--output_dir", str(tmp_path / "o"), *flags],
                       env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode != 0 and message in r.stderr


def test_sm100_plugins_fail_in_the_stand_in_like_plugin_validate(tmp_path, standins):
    b200 = {"name": "NVIDIA B200", "compute_cap": "10.0", "memory_total_mib": 183359, "memory_used_mib": 0}
    env = standins(gpus=[b200])
    r = subprocess.run(["trtllm-build", "--checkpoint_dir", str(tmp_path), "--low_latency_gemm_plugin", "fp8"],
                       env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode != 0 and "low_latency_gemm_plugin=fp8 is not supported on SM 100" in r.stderr


# -- 5: list-valued options plan and key; LoRA modules are the 1.2.x set ----------------------------------

def test_lora_lists_plan_key_and_follow_the_adapter(tmp_path, standins):
    root = project(tmp_path / "repo", "  - name: llama\n    checkpoint: ckpt/llama\n    validate: false\n"
                   "    build: {lora_plugin: auto, lora_dir: [lora/a], lora_target_modules: [attn_q, attn_v]}\n")
    (root / "lora/a").mkdir(parents=True)
    (root / "lora/a/adapter_config.json").write_text('{"r": 8}')
    env = standins(gpus=[H100])
    states = plan(root, env)
    assert states["llama/sm90/tp1-pp1"]["state"] == "missing"
    assert doit(root, env=env).returncode == 0
    argv = trtllm_log(env)[-1]["argv"]
    i = argv.index("--lora_dir")
    assert argv[i + 1] == str(root / "lora/a")  # resolved against models.yaml's dir
    j = argv.index("--lora_target_modules")
    assert argv[j + 1:j + 3] == ["attn_q", "attn_v"]
    m = json.loads((root / "engines/llama/sm90/tp1-pp1/manifest.json").read_text())
    assert m["fields"]["build"]["lora_dir"] == ["lora/a"] and "build.lora_dir[0]" in m["fields"]["inputs"]
    assert plan(root, env)["llama/sm90/tp1-pp1"]["state"] == "fresh"
    (root / "lora/a/adapter_config.json").write_text('{"r": 16}')
    st = plan(root, env)["llama/sm90/tp1-pp1"]
    assert st["state"] == "stale" and any(r.startswith("inputs.build.lora_dir[0] ") for r in st["reasons"])


def test_lora_target_modules_outside_the_1_2_set_are_refused(tmp_path, standins):
    root = project(tmp_path / "repo", "  - name: llama\n    checkpoint: ckpt/llama\n"
                   "    build: {lora_target_modules: [shared_expert_h_to_4h]}\n")
    r = doit(root, "plan", env=standins(gpus=[H100]))
    assert r.returncode == 2 and "invalid choice 'shared_expert_h_to_4h'" in r.stderr
    assert "lora_target_modules" in r.stderr


def test_missing_lora_dir_is_one_line(tmp_path, standins):
    root = project(tmp_path / "repo", "  - name: llama\n    checkpoint: ckpt/llama\n"
                   "    build: {lora_plugin: auto, lora_dir: [nowhere]}\n")
    r = doit(root, "plan", env=standins(gpus=[H100]))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "models.yaml:6: models[llama].build.lora_dir[0]: " in r.stderr and "is not a directory" in r.stderr


# -- 6: the toolchain gated by capability, from metadata --------------------------------------------------

@pytest.mark.parametrize("kw,why", [
    ({"trtllm_version": "1.3.0", "engine_builder": False}, "has no TensorRT engine builder"),
    ({"trtllm_version": "1.1.0"}, "is not supported: the trtllm-build option table is checked against 1.2.x only"),
])
def test_toolchain_without_engine_builder_or_table_is_reported(tmp_path, standins, kw, why):
    root = project(tmp_path / "repo", "  - name: llama\n    checkpoint: ckpt/llama\n")
    env = standins(gpus=[H100], **kw)
    st = plan(root, env)["llama/sm90/tp1-pp1"]
    assert st["state"] == "blocked" and why in st["reasons"][0]
    assert "pip install --extra-index-url https://pypi.nvidia.com 'tensorrt_llm>=1.2,<1.3'" in st["reasons"][0]
    r = doit(root, env=env)
    assert r.returncode == 0 and trtllm_log(env) == []


def test_a_release_after_the_engine_path_says_what_changed_upstream(tmp_path, standins):
    """#25 item 6: a newer install is told in one line that main removed the engine path and 1.2.x is the last
    series with it, not just that something is missing."""
    root = project(tmp_path / "repo", "  - name: llama\n    checkpoint: ckpt/llama\n")
    why = plan(root, standins(gpus=[H100], trtllm_version="1.3.0", engine_builder=False))["llama/sm90/tp1-pp1"]
    assert "removed trtllm-build, trtllm-refit, the TensorRT engine runtime and the inflight_batcher_llm Triton " \
        "backend in mid-2026 (PRs #15763, #15767, #15907, #15918" in why["reasons"][0], why
    assert "1.2.x is the last series with them" in why["reasons"][0]


# -- 7: a failed validation is never reported as good ---------------------------------------------------

def test_failed_validation_shows_as_unvalidated(tmp_path, standins):
    root = project(tmp_path / "repo", "  - name: llama\n    checkpoint: ckpt/llama\n")
    env = standins(gpus=[H100])
    r = doit(root, env={**env, "STANDIN_RUNNER_SIGSEGV": "1"})
    assert r.returncode == 1
    r = doit(root, "plan", env=env)
    line = next(x for x in r.stdout.splitlines() if "llama/sm90/tp1-pp1" in x)
    log = root / "engines/llama/sm90/tp1-pp1/validate.log"
    assert line.startswith("unvalidated llama/sm90/tp1-pp1  (validation failed: ") and "killed by SIGSEGV" in line
    assert str(log) in line and log.is_file()
    assert doit(root, "plan", "--check", env=env).returncode == 1
    st = plan(root, env)["llama/sm90/tp1-pp1"]
    assert st["state"] == "unvalidated" and "killed by SIGSEGV" in st["reasons"][0]
    targets = doit(root, "plan", "--targets", env=env).stdout.split()
    assert targets == ["validate:llama/sm90/tp1-pp1"]
    r = doit(root, env=env)  # validation runs again (the engine is not rebuilt)
    assert r.returncode == 0 and len(trtllm_log(env)) == 1
    assert plan(root, env)["llama/sm90/tp1-pp1"]["state"] == "fresh"


def test_never_validated_engine_is_unvalidated(tmp_path, standins):
    root = project(tmp_path / "repo", "  - name: llama\n    checkpoint: ckpt/llama\n")
    env = standins(gpus=[H100])
    assert doit(root, "build:llama/sm90/tp1-pp1", env=env).returncode == 0
    st = plan(root, env)["llama/sm90/tp1-pp1"]
    assert (st["state"], st["reasons"]) == ("unvalidated", ["not validated yet"])


# -- 8: one GPU per rank to validate, never shared ------------------------------------------------------

def test_validation_needs_a_gpu_per_rank(tmp_path, standins):
    root = project(tmp_path / "repo", "  - name: llama\n    checkpoint: ckpt/llama\n    parallel: [{tp: 4, pp: 1}]\n")
    env = standins(gpus=[H100, H100])
    r = doit(root, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    edir = root / "engines/llama/sm90/tp4-pp1"
    assert (edir / "rank3.engine").is_file() and not (edir / "validation.json").exists()
    assert "validation needs 4 sm90 GPUs (one per rank); this host has 2" in r.stdout
    st = plan(root, env)["llama/sm90/tp4-pp1"]
    assert st["state"] == "blocked" and st["reasons"][0].startswith("validation needs 4 sm90 GPUs")


# -- 9: trtllm-build gets only what differs from the defaults of the one supported series -----------------------

def test_trtllm_build_argv_is_short(tmp_path, standins):
    root = project(tmp_path / "repo", "  - name: llama\n    checkpoint: ckpt/llama\n    validate: false\n")
    env = standins(gpus=[H100])
    assert doit(root, env=env).returncode == 0
    argv = trtllm_log(env)[-1]["argv"]
    flags = [a for a in argv if a.startswith("--")]
    assert flags == ["--checkpoint_dir", "--output_dir", "--max_batch_size", "--max_seq_len", "--workers",
                     "--input_timing_cache", "--output_timing_cache", "--log_level"]


# -- 10: a shard that is not safetensors fails conversion, as the real loader does --------------------------

def test_random_bytes_shard_fails_conversion(tmp_path, standins):
    """doit refuses it before any worker starts (buildlib.checkpoint); the stand-in loader refuses it too, as
    safetensors' safe_open does in the real conversion."""
    root = project(tmp_path / "repo", "  - name: llama\n    checkpoint: ckpt/llama\n")
    shard = root / "ckpt/llama/model-00002-of-00002.safetensors"
    shard.write_bytes(os.urandom(4096))
    env = standins(gpus=[H100])
    r = doit(root, env=env)
    assert r.returncode == 1
    assert f"{shard}: not a safetensors file" in r.stdout + r.stderr
    assert not (root / "engines/llama/sm90/tp1-pp1").exists() and trtllm_log(env) == []
    code = ("import sys\nfrom tensorrt_llm import Mapping\nfrom tensorrt_llm.models import AutoModelForCausalLM\n"
            "AutoModelForCausalLM.from_hugging_face(sys.argv[1], 'float16', mapping=Mapping())\n")
    r = subprocess.run([sys.executable, "-c", code, str(root / "ckpt/llama")], env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode != 0 and "Error while deserializing header" in r.stderr
