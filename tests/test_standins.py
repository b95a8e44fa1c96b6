"""The stand-ins behave like TensorRT-LLM 1.2.1 at the process boundary, and trtllm_options matches their parser."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from buildlib.backends.trtllm_options import (
    BUILD_OPTIONS,
    RESERVED,
    OptionError,
    resolve_build_options,
    to_argv,
)
from tests.conftest import A100, write_safetensors
from tests.standins import H100, TENSORRT_VERSION, standin_env

HF_CONFIG = {"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "vocab_size": 256, "num_hidden_layers": 2,
             "max_position_embeddings": 4096, "torch_dtype": "float16"}

CONVERT = """
import sys
from tensorrt_llm import Mapping
from tensorrt_llm.models import AutoModelForCausalLM
hf, out, tp, pp = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
for rank in range(tp * pp):
    mapping = Mapping(world_size=tp * pp, rank=rank, tp_size=tp, pp_size=pp)
    model = AutoModelForCausalLM.from_hugging_face(hf, "float16", mapping=mapping)
    model.save_checkpoint(out, save_config=(rank == 0))
"""

PARSER_DUMP = """
import json
from tensorrt_llm.commands.build import parse_arguments
out = {}
for a in parse_arguments()._actions:
    if a.dest == "help":
        continue
    default = "==SUPPRESS==" if a.default == "==SUPPRESS==" else a.default
    out[a.dest] = {"flags": a.option_strings, "default": default, "nargs": a.nargs,
                   "choices": sorted(set(a.choices)) if a.choices else None, "store_true": a.const is True}
print(json.dumps(out))
"""


def py(env: dict[str, str], code: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=120)


def run(env: dict[str, str], *argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), env=env, cwd=cwd, capture_output=True, text=True, timeout=120)


def make_hf(d: Path, seed: int = 0) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps(HF_CONFIG))
    write_safetensors(d / "model-00001-of-00001.safetensors", {"w": bytes((seed + i) % 251 for i in range(4096))})
    return d


def convert(env: dict[str, str], hf: Path, out: Path, tp: int = 1, pp: int = 1) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    r = py(env, CONVERT, str(hf), str(out), str(tp), str(pp))
    assert r.returncode == 0, r.stderr
    return out


def trtllm_build(env: dict[str, str], ckpt: Path, out: Path, *extra: str, cwd: Path) -> subprocess.CompletedProcess:
    return run(env, "trtllm-build", "--checkpoint_dir", str(ckpt), "--output_dir", str(out), *extra, cwd=cwd)


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    e = standin_env(tmp_path / "standins", gpus=[H100, H100])
    e.pop("CUDA_VISIBLE_DEVICES", None)
    e["STANDIN_TRTLLM_LOG"] = str(tmp_path / "trtllm.log")
    return e


@pytest.fixture
def tp2(env: dict[str, str], tmp_path: Path) -> Path:
    return convert(env, make_hf(tmp_path / "hf"), tmp_path / "ckpt-tp2", tp=2)


# -- trtllm-build -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [["--max_output_len", "64"], ["--tp_size", "2"], ["--pp_size", "2"],
                                 ["--timing_cache", "x.cache"], ["--auto_parallel", "2"]])
def test_trtllm_build_rejects_removed_options_like_argparse(env, tp2, tmp_path, bad):
    r = trtllm_build(env, tp2, tmp_path / "eng", *bad, cwd=tmp_path)
    assert r.returncode == 2
    assert f"error: unrecognized arguments: {' '.join(bad)}" in r.stderr
    assert not (tmp_path / "eng").exists()


def test_trtllm_build_rejects_bad_choice_and_type(env, tp2, tmp_path):
    r = trtllm_build(env, tp2, tmp_path / "eng", "--gemm_plugin", "fp16", cwd=tmp_path)
    assert r.returncode == 2 and "argument --gemm_plugin: invalid choice: 'fp16'" in r.stderr
    r = trtllm_build(env, tp2, tmp_path / "eng", "--kv_cache_type", "pagd", cwd=tmp_path)
    assert r.returncode == 2 and "invalid KVCacheType value: 'pagd'" in r.stderr
    r = trtllm_build(env, tp2, tmp_path / "eng", "--max_batch_size", "8.5", cwd=tmp_path)
    assert r.returncode == 2 and "argument --max_batch_size: invalid int value: '8.5'" in r.stderr


def test_tp2_build_writes_config_and_exactly_world_size_engines(env, tp2, tmp_path):
    ckpt_cfg = json.loads((tp2 / "config.json").read_text())
    assert ckpt_cfg["mapping"]["world_size"] == 2 and ckpt_cfg["mapping"]["tp_size"] == 2
    assert "rank" not in ckpt_cfg["mapping"]
    assert sorted(p.name for p in tp2.iterdir()) == ["config.json", "rank0.safetensors", "rank1.safetensors"]

    out = tmp_path / "eng"
    r = trtllm_build(env, tp2, out, "--max_batch_size", "8", "--workers", "2", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "rank0.engine", "rank1.engine"]
    cfg = json.loads((out / "config.json").read_text())
    assert set(cfg) == {"version", "pretrained_config", "build_config"}
    assert cfg["version"] == "1.2.1"
    assert cfg["pretrained_config"]["architecture"] == "LlamaForCausalLM"
    assert cfg["pretrained_config"]["mapping"]["tp_size"] == 2
    b = cfg["build_config"]
    assert (b["max_batch_size"], b["max_seq_len"], b["kv_cache_type"]) == (8, 4096, "PAGED")  # deduced, resolved
    assert b["plugin_config"]["gpt_attention_plugin"] == "float16"  # "auto" -> model dtype
    assert b["output_timing_cache"] == "model.cache"
    assert (tmp_path / "model.cache").is_file()  # relative default lands in the CWD
    assert "Total time of building all engines" in r.stdout
    rec = [json.loads(line) for line in Path(env["STANDIN_TRTLLM_LOG"]).read_text().splitlines()]
    assert rec[-1]["argv"][:2] == ["--checkpoint_dir", str(tp2)]
    assert rec[-1]["cwd"] == str(tmp_path) and rec[-1]["CUDA_VISIBLE_DEVICES"] is None and rec[-1]["pid"] > 0


def test_engine_bytes_follow_checkpoint_options_and_version(env, tp2, tmp_path):
    def engine(tag: str, ckpt: Path, e: dict[str, str], *extra: str) -> bytes:
        out = tmp_path / tag
        r = trtllm_build(e, ckpt, out, "--max_batch_size", "8", "--output_timing_cache", str(tmp_path / f"{tag}.tc"),
                         *extra, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        return (out / "rank1.engine").read_bytes()

    base = engine("a", tp2, env)
    assert engine("b", tp2, env) == base  # deterministic
    assert engine("c", tp2, env, "--input_timing_cache", str(tmp_path / "a.tc")) == base  # caches are not inputs
    assert engine("d", tp2, env, "--max_batch_size", "16") != base
    other = convert(env, make_hf(tmp_path / "hf2", seed=7), tmp_path / "ckpt2", tp=2)
    assert engine("e", other, env) != base
    older = standin_env(tmp_path / "old", trtllm_version="1.2.0", gpus=[H100])
    assert engine("f", tp2, older) != base


def test_output_timing_cache_is_written_by_rank0_only_once(env, tp2, tmp_path):
    cache = tmp_path / "caches" / "h100.cache"
    cache.parent.mkdir()
    r = trtllm_build(env, tp2, tmp_path / "eng", "--output_timing_cache", str(cache), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert cache.read_bytes().startswith(b"STANDIN-TRT-TIMING-CACHE")
    assert r.stdout.count("Timing cache serialized to") == 1


def test_crash_hook_leaves_partial_dir_and_failing_status(env, tp2, tmp_path):
    out = tmp_path / "eng"
    r = trtllm_build({**env, "STANDIN_TRTLLM_CRASH_AFTER_RANK": "0"}, tp2, out, cwd=tmp_path)
    assert r.returncode == -signal.SIGKILL
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "rank0.engine"]


@pytest.mark.parametrize("gpus,visible", [([], None), ([H100], ""), ([H100], "5")])
def test_no_visible_gpu_fails_like_the_real_build(tmp_path, tp2, gpus, visible):
    e = standin_env(tmp_path / "nogpu", gpus=gpus)
    e.pop("CUDA_VISIBLE_DEVICES", None)
    if visible is not None:
        e["CUDA_VISIBLE_DEVICES"] = visible
    r = trtllm_build(e, tp2, tmp_path / "eng", cwd=tmp_path)
    assert r.returncode == 1
    assert "ValueError: max_workers must be greater than 0" in r.stderr
    assert not list((tmp_path / "eng").iterdir())  # the real one has created the (empty) output dir


def test_missing_rank_weights_fail(env, tp2, tmp_path):
    (tp2 / "rank1.safetensors").unlink()
    r = trtllm_build(env, tp2, tmp_path / "eng", cwd=tmp_path)
    assert r.returncode != 0 and "AssertionError" in r.stderr
    assert not (tmp_path / "eng" / "rank1.engine").exists()


# -- conversion API and runtime -----------------------------------------------------------------------------------

def test_checkpoint_is_valid_safetensors_and_deterministic(env, tmp_path):
    hf = make_hf(tmp_path / "hf")
    a = convert(env, hf, tmp_path / "a", tp=2)
    b = convert(env, hf, tmp_path / "b", tp=2)
    for r in (0, 1):
        data = (a / f"rank{r}.safetensors").read_bytes()
        assert data == (b / f"rank{r}.safetensors").read_bytes()
        n = int.from_bytes(data[:8], "little")
        header = json.loads(data[8:8 + n])
        assert header["lm_head.weight"]["dtype"] == "F16"
        assert max(v["data_offsets"][1] for k, v in header.items() if k != "__metadata__") == len(data) - 8 - n
    assert (a / "rank0.safetensors").read_bytes() != (a / "rank1.safetensors").read_bytes()


def test_unsupported_architecture_is_refused(env, tmp_path):
    hf = make_hf(tmp_path / "hf")
    (hf / "config.json").write_text(json.dumps({**HF_CONFIG, "architectures": ["FancyForCausalLM"]}))
    r = py(env, CONVERT, str(hf), str(tmp_path / "out"), "1", "1")
    assert r.returncode != 0
    assert "NotImplementedError: The given huggingface model architecture FancyForCausalLM is not supported" in r.stderr


RUNNER = """
import sys
import torch
from tensorrt_llm.runtime import ModelRunner
runner = ModelRunner.from_dir(engine_dir=sys.argv[1], rank=int(sys.argv[2]))
out = runner.generate(batch_input_ids=[torch.tensor([1, 2, 3])], max_new_tokens=4, end_id=-1, pad_id=0)
print(out.tolist())
"""


def _world(env: dict[str, str], n: int) -> dict[str, str]:
    return {**env, "OMPI_COMM_WORLD_SIZE": str(n)}


def test_model_runner_generates_and_refuses_foreign_engines(env, tp2, tmp_path):
    out = tmp_path / "eng"
    assert trtllm_build(env, tp2, out, cwd=tmp_path).returncode == 0
    r0, r1 = py(_world(env, 2), RUNNER, str(out), "0"), py(_world(env, 2), RUNNER, str(out), "1")
    assert r0.returncode == 0, r0.stderr
    assert r0.stdout.splitlines()[-1] == r1.stdout.splitlines()[-1]  # all ranks agree
    ids = json.loads(r0.stdout.splitlines()[-1])
    assert ids[0][0][:3] == [1, 2, 3] and len(ids[0][0]) == 7 and all(0 <= t < 256 for t in ids[0][0])

    newer = standin_env(tmp_path / "newer", trtllm_version="1.2.2", gpus=[H100])
    r = py(_world(newer, 2), RUNNER, str(out), "0")
    assert r.returncode != 0 and "please rebuild" in r.stderr
    other_trt = standin_env(tmp_path / "trt", tensorrt_version="10.13.3.9", gpus=[H100, H100])
    r = py(_world(other_trt, 2), RUNNER, str(out), "0")
    assert "not compatible with this version of TensorRT, expecting library version 10.13.3.9 got " \
           f"{TENSORRT_VERSION}, please rebuild" in r.stderr
    ampere = standin_env(tmp_path / "a100", gpus=[A100, A100])
    r = py(_world(ampere, 2), RUNNER, str(out), "0")
    assert "generated on an incompatible device, expecting compute 8.0 got compute 9.0, please rebuild" in r.stderr


def test_model_runner_is_as_strict_as_the_real_one(env, tp2, tmp_path):
    """Lists instead of tensors, a multi-rank engine outside its MPI world, a rank without its own GPU."""
    out = tmp_path / "eng"
    assert trtllm_build(env, tp2, out, cwd=tmp_path).returncode == 0
    lists = RUNNER.replace("[torch.tensor([1, 2, 3])]", "[[1, 2, 3]]")
    r = py(_world(env, 2), lists, str(out), "0")
    assert r.returncode != 0 and "AttributeError: 'list' object has no attribute 'size'" in r.stderr
    r = py(env, RUNNER, str(out), "0")
    assert r.returncode != 0 and "Engine world size (2) != Runtime world size (1)" in r.stderr
    one_gpu = standin_env(tmp_path / "one", gpus=[H100])
    r = py(_world(one_gpu, 2), RUNNER, str(out), "1")
    assert r.returncode != 0 and "invalid device ordinal" in r.stderr


# -- trtllm-refit --------------------------------------------------------------------------------------------------

def trtllm_refit(env: dict[str, str], engine: Path, ckpt: Path, out: Path | None) -> subprocess.CompletedProcess:
    argv = ["trtllm-refit", "--engine_dir", str(engine), "--checkpoint_dir", str(ckpt)]
    return run(env, *argv, *(["--output_dir", str(out)] if out else []))


def test_strip_plan_engine_runs_only_after_trtllm_refit(env, tp2, tmp_path):
    stripped, full, plain = tmp_path / "stripped", tmp_path / "full", tmp_path / "plain"
    assert trtllm_build(env, tp2, stripped, "--strip_plan", cwd=tmp_path).returncode == 0
    assert json.loads((stripped / "config.json").read_text())["build_config"]["use_strip_plan"] is True
    r = py(_world(env, 2), RUNNER, str(stripped), "0")
    assert r.returncode != 0 and "weight-stripped" in r.stderr
    r = trtllm_refit(env, stripped, tp2, full)
    assert r.returncode == 0, r.stdout + r.stderr
    assert sorted(p.name for p in full.iterdir()) == ["config.json", "rank0.engine", "rank1.engine"]
    assert trtllm_build(env, tp2, plain, cwd=tmp_path).returncode == 0
    refitted, built = py(_world(env, 2), RUNNER, str(full), "0"), py(_world(env, 2), RUNNER, str(plain), "0")
    assert refitted.returncode == 0, refitted.stderr
    assert refitted.stdout.splitlines()[-1] == built.stdout.splitlines()[-1]  # same weights, same tokens
    # refitted with another fine-tune's weights: other tokens; and the refitted engine can be refitted again
    other = convert(env, make_hf(tmp_path / "hf2", seed=7), tmp_path / "ckpt2", tp=2)
    again = tmp_path / "again"
    assert trtllm_refit(env, full, other, again).returncode == 0
    assert py(_world(env, 2), RUNNER, str(again), "0").stdout.splitlines()[-1] != refitted.stdout.splitlines()[-1]


def test_trtllm_refit_refuses_what_the_real_one_refuses(env, tp2, tmp_path):
    stripped, plain = tmp_path / "stripped", tmp_path / "plain"
    assert trtllm_build(env, tp2, stripped, "--strip_plan", cwd=tmp_path).returncode == 0
    assert trtllm_build(env, tp2, plain, cwd=tmp_path).returncode == 0
    # an engine built without --strip_plan is not refittable: TensorRT creates no refitter for it
    r = trtllm_refit(env, plain, tp2, tmp_path / "o1")
    assert r.returncode != 0 and "factory function returned nullptr" in r.stderr
    # a checkpoint of another architecture
    qwen = tmp_path / "qwen"
    shutil.copytree(tp2, qwen)
    cfg = json.loads((qwen / "config.json").read_text())
    (qwen / "config.json").write_text(json.dumps({**cfg, "architecture": "Qwen2ForCausalLM"}))
    r = trtllm_refit(env, stripped, qwen, tmp_path / "o2")
    assert r.returncode != 0 and "Engine Architecture and Checkpoint Architecture do not match. Engine Architecture:" \
        " `LlamaForCausalLM`, Checkpoint Architecture: `Qwen2ForCausalLM`" in r.stderr
    # a checkpoint with other tensors (a structural change): the refittable weights it lacks are named
    deeper = convert(env, make_hf(tmp_path / "hf3"), tmp_path / "ckpt3", tp=2)
    cfg3 = {**HF_CONFIG, "num_hidden_layers": 1}
    (tmp_path / "hf4").mkdir()
    (tmp_path / "hf4/config.json").write_text(json.dumps(cfg3))
    shutil.copy(tmp_path / "hf3/model-00001-of-00001.safetensors", tmp_path / "hf4")
    shallower = convert(env, tmp_path / "hf4", tmp_path / "ckpt4", tp=2)
    assert deeper.exists()
    r = trtllm_refit(env, stripped, shallower, tmp_path / "o3")
    assert r.returncode != 0 and "Missing refittable weights {'transformer.layers.1.attention.qkv.weight'}" in r.stderr
    # missing dirs, and no --output_dir (os.path.normpath(None))
    r = trtllm_refit(env, tmp_path / "nope", tp2, tmp_path / "o4")
    assert r.returncode != 0 and f"Please supply a valid --engine_dir (found `{tmp_path / 'nope'}`)" in r.stderr
    r = trtllm_refit(env, stripped, tp2, None)
    assert r.returncode != 0 and "TypeError" in r.stderr
    # on a GPU of another compute capability the plan does not deserialize
    ampere = {**standin_env(tmp_path / "a100", gpus=[A100])}
    r = trtllm_refit(ampere, stripped, tp2, tmp_path / "o5")
    assert r.returncode != 0 and "incompatible device" in r.stderr


def test_metadata_versions_without_import(tmp_path):
    e = standin_env(tmp_path / "s", trtllm_version="1.2.0", tensorrt_version="10.13.3.9")
    code = ("import importlib.metadata as m, sys; print(m.version('tensorrt_llm'), m.version('tensorrt-llm'), "
            "m.version('tensorrt'), 'tensorrt_llm' in sys.modules, 'tensorrt' in sys.modules)")
    r = py(e, code)
    assert r.stdout.split() == ["1.2.0", "1.2.0", "10.13.3.9", "False", "False"]
    r = py(e, "import tensorrt, tensorrt_llm; print(tensorrt_llm.__version__, tensorrt.__version__)")
    assert r.stdout.splitlines() == ["[TensorRT-LLM] TensorRT LLM version: 1.2.0", "1.2.0 10.13.3.9"]


# -- nvidia-smi ---------------------------------------------------------------------------------------------------

def test_nvidia_smi_query_format(tmp_path):
    h200 = {"name": "NVIDIA H200", "compute_cap": "9.0", "memory_total_mib": 143771, "memory_used_mib": 0}
    e = standin_env(tmp_path / "s", gpus=[h200, A100])
    e["CUDA_VISIBLE_DEVICES"] = "1"  # NVML ignores it: nvidia-smi lists every GPU
    r = run(e, "nvidia-smi", "--query-gpu=index,name,compute_cap,memory.total,memory.used", "--format=csv,noheader")
    assert r.returncode == 0
    assert r.stdout.splitlines() == ["0, NVIDIA H200, 9.0, 143771 MiB, 0 MiB",
                                     "1, NVIDIA A100-SXM4-80GB, 8.0, 81920 MiB, 0 MiB"]
    r = run(e, "nvidia-smi", "--query-gpu=index,memory.total,driver_version,uuid,pci.bus_id", "--format=csv,nounits")
    lines = r.stdout.splitlines()
    assert lines[0] == "index, memory.total [MiB], driver_version, uuid, pci.bus_id"
    idx, mem, driver, uuid, bus = lines[1].split(", ")
    assert (idx, mem, driver) == ("0", "143771", "580.95.05") and uuid.startswith("GPU-") and bus.endswith(":00.0")
    r = run(e, "nvidia-smi", "-L")
    assert r.stdout.splitlines()[1].startswith("GPU 1: NVIDIA A100-SXM4-80GB (UUID: GPU-")
    r = run(e, "nvidia-smi", "--query-gpu=index,bogus", "--format=csv")
    assert r.returncode != 0 and 'Field "bogus" is not a valid field to query.' in r.stdout


def test_nvidia_smi_without_devices(tmp_path):
    e = standin_env(tmp_path / "s", gpus=[])
    r = run(e, "nvidia-smi", "--query-gpu=index,name", "--format=csv,noheader")
    assert r.returncode == 6 and r.stdout.strip() == "No devices were found"


def test_default_gpu_is_one_h100(tmp_path):
    r = run(standin_env(tmp_path / "s"), "nvidia-smi", "--query-gpu=name,compute_cap,memory.total",
            "--format=csv,noheader")
    assert r.stdout.splitlines() == ["NVIDIA H100 80GB HBM3, 9.0, 81559 MiB"]


# -- trtllm_options -----------------------------------------------------------------------------------------------

def test_resolve_fills_every_default_in_sorted_order():
    r = resolve_build_options({"max_batch_size": 8})
    assert list(r) == sorted(BUILD_OPTIONS)
    assert r["max_batch_size"] == 8 and r["max_input_len"] == 1024 and r["max_num_tokens"] == 8192
    # kv_cache_type is resolved per model (resolve_for_model), max_seq_len by trtllm-build from the checkpoint.
    assert r["kv_cache_type"] is None and r["max_seq_len"] is None and r["gemm_plugin"] is None
    assert r["gpt_attention_plugin"] == "auto" and r["context_fmha"] == "enable" and r["tokens_per_block"] == 32
    assert resolve_build_options({}) == resolve_build_options({"max_batch_size": 2048})
    assert resolve_build_options({"kv_cache_type": "PAGED"})["kv_cache_type"] == "paged"


def test_resolve_rejects_bool_for_int_and_bad_values():
    with pytest.raises(OptionError) as e:
        resolve_build_options({"max_batch_size": True})
    assert e.value.field == "max_batch_size" and "integer" in e.value.message
    with pytest.raises(OptionError, match="did you mean 'auto'"):
        resolve_build_options({"gemm_plugin": "aut"})
    with pytest.raises(OptionError, match="flag"):
        resolve_build_options({"strip_plan": "yes"})
    with pytest.raises(OptionError, match=">= 1"):
        resolve_build_options({"max_batch_size": 0})
    with pytest.raises(OptionError, match="draft"):
        resolve_build_options({"gather_context_logits": True, "max_draft_len": 4})


def test_resolve_explains_unknown_removed_and_reserved_options():
    with pytest.raises(OptionError) as e:
        resolve_build_options({"max_batch_sze": 8})
    assert e.value.field == "max_batch_sze" and "did you mean `max_batch_size`" in e.value.message
    with pytest.raises(OptionError, match="write it as `max_input_len`"):
        resolve_build_options({"max-input-len": 8})
    with pytest.raises(OptionError, match="max_seq_len"):
        resolve_build_options({"max_output_len": 64})
    with pytest.raises(OptionError, match="parallelism comes from `parallel:`"):
        resolve_build_options({"tp_size": 2})
    for name in ("checkpoint_dir", "output_dir", "workers", "input_timing_cache", "output_timing_cache",
                 "log_level", "model_config", "build_config", "model_cls_file", "visualize_network", "dry_run"):
        with pytest.raises(OptionError, match="set by enginebuild itself") as e:
            resolve_build_options({name: "x"})
        assert e.value.field == name


def test_resolve_normalizes_aliases_yaml_booleans_and_shorthands():
    r = resolve_build_options({"max_decoder_seq_len": 4096, "context_fmha": False, "lora_plugin": False,
                               "gather_all_token_logits": True})
    assert r["max_seq_len"] == 4096 and r["context_fmha"] == "disable" and r["lora_plugin"] == "disable"
    assert (r["gather_context_logits"], r["gather_generation_logits"], r["gather_all_token_logits"]) == \
        (True, True, False)
    with pytest.raises(OptionError, match="set twice"):
        resolve_build_options({"max_seq_len": 1, "max_decoder_seq_len": 2})


def test_to_argv_passes_only_what_differs_from_the_defaults():
    r = resolve_build_options({"max_batch_size": 8, "strip_plan": True, "lora_dir": ["a", "b"]})
    argv = to_argv(r, "/proj")
    assert argv == ["--lora_dir", "/proj/a", "/proj/b", "--max_batch_size", "8", "--strip_plan"]
    assert to_argv(resolve_build_options({"max_batch_size": 8})) == ["--max_batch_size", "8"]  # was 76 tokens
    assert to_argv(resolve_build_options({"kv_cache_type": "continuous"})) == ["--kv_cache_type", "continuous"]


def test_options_match_the_stand_in_parser(env):
    r = py(env, PARSER_DUMP)
    assert r.returncode == 0, r.stderr
    parser = json.loads(r.stdout.splitlines()[-1])  # after the import banner
    assert set(parser) == set(BUILD_OPTIONS) | RESERVED
    for name, opt in BUILD_OPTIONS.items():
        p = parser[name]
        default = None if p["default"] == "==SUPPRESS==" else p["default"]
        assert default == opt.default, name
        assert (p["store_true"] and p["nargs"] == 0) == (opt.kind == "flag"), name
        assert (p["nargs"] == "+") == (opt.kind == "list"), name
        assert set(p["choices"] or ()) == set(opt.choices) or name == "kv_cache_type", name


def test_to_argv_is_accepted_by_trtllm_build(env, tp2, tmp_path):
    argv = to_argv(resolve_build_options({"max_batch_size": 8, "max_seq_len": 2048, "gemm_plugin": "auto",
                                          "lora_target_modules": ["attn_q"], "lora_plugin": "auto"}))
    r = trtllm_build(env, tp2, tmp_path / "eng", *argv, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    b = json.loads((tmp_path / "eng" / "config.json").read_text())["build_config"]
    assert (b["max_seq_len"], b["plugin_config"]["gemm_plugin"]) == (2048, "float16")
    assert b["lora_config"]["lora_target_modules"] == ["attn_q"]
