"""Filling the release's Triton templates the way its own tools/fill_template.py does, and checking the result.

fill_template.py (triton_backend/tools of TensorRT-LLM 1.2.x) reads a config.pbtxt as a `string.Template`, always
sets max_queue_size and max_queue_delay_microseconds to 0, and calls `safe_substitute`: a placeholder nobody gave
a value stays in the file as the literal `${name}`. The backend and the Python models are written for that: the
C++ backend (inflight_batcher_llm/src/model_instance_state.cc) reads tokenizer_dir, xgrammar_tokenizer_info_path
and guided_decoding_backend without a fallback and tests them against the literal `${...}`; preprocessing's
model.py reads multimodal_model_path the same way; the BLS model treats a value starting with `${` as unset. So a
parameter block is never dropped (that breaks loading); a `${...}` left in a string parameter is left as the tool
leaves it, and one left anywhere else (a type, a count, a batch size: Triton cannot parse the file) is refused.

Values (`values`): the engine's own (batch size, beam width, one GPU id per rank, data types), its dir and
checkpoint, what the backend needs to load at all (its name, the batching strategy, the transaction policy, one
instance of each Python model), and a model's `triton:` mapping in models.yaml; a value that contradicts the
engine is refused. docs/tensorrt-llm-contract.md has the table of every placeholder.
"""

from __future__ import annotations

import re
import string
from pathlib import Path
from typing import Any

from ..core.engine import Engine
from ..core.errors import BuildFailed
from ..core.model import TRITON_MODELS as MODELS

PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
PARAMETERS = re.compile(r"^parameters\s*:?\s*\{", re.M)
# Values buildlib owns: they come from the engine itself, never from models.yaml.
OWNED = ("engine_dir", "tokenizer_dir")
TYPES = {"float16": "TYPE_FP16", "bfloat16": "TYPE_BF16", "float32": "TYPE_FP32"}
# fill_template.py's own: set on every file it fills.
TOOL_DEFAULTS = {"max_queue_size": "0", "max_queue_delay_microseconds": "0"}
# What the repository needs to load at all, as the release's quick start sets it: fields Triton parses as numbers,
# booleans or names, and the one parameter the C++ backend requires (gpt_model_type: v1/inflight_*batching).
LOAD_DEFAULTS = {"triton_backend": "tensorrtllm", "decoupled_mode": "false",
                 "batching_strategy": "inflight_fused_batching", "preprocessing_instance_count": "1",
                 "postprocessing_instance_count": "1", "bls_instance_count": "1"}


def _scalar(v: str | int | float | bool) -> str:
    return ("true" if v else "false") if isinstance(v, bool) else str(v)


def values(engine: Engine, engine_dir: Path, tokenizer_dir: Path, config: dict[str, Any],
           overrides: dict[str, str | int | float | bool]) -> dict[str, str]:
    """The placeholders this engine and models.yaml give a value; BuildFailed where models.yaml contradicts the
    engine."""
    build, pre = config.get("build_config", {}), config.get("pretrained_config", {})
    mapping = pre.get("mapping", {})
    world = int(mapping.get("world_size", engine.tp * engine.pp))
    dtype = TYPES.get(str(pre.get("dtype")), "TYPE_FP16")
    out = {**TOOL_DEFAULTS, **LOAD_DEFAULTS, "triton_max_batch_size": str(build.get("max_batch_size", 1)),
           "max_beam_width": str(build.get("max_beam_width", 1)), "gpu_device_ids": ",".join(map(str, range(world))),
           "logits_datatype": TYPES.get(str(pre.get("logits_dtype", "float32")), "TYPE_FP32"),
           "encoder_input_features_data_type": dtype, "prompt_embedding_table_data_type": dtype,
           "engine_dir": str(engine_dir), "tokenizer_dir": str(tokenizer_dir)}
    where = f"triton:{engine.id}"
    for k, v in overrides.items():
        if k in OWNED:
            raise BuildFailed(f"{where}: {k} is the engine's own ({out[k]}); remove it from `triton:` in models.yaml")
        out[k] = _scalar(v)
    for k, cap in (("triton_max_batch_size", "max_batch_size"), ("max_beam_width", "max_beam_width")):
        if not out[k].isdigit() or not 1 <= int(out[k]) <= int(build.get(cap, 1)):
            raise BuildFailed(f"{where}: {k} {out[k]} contradicts the engine (built with {cap} "
                              f"{build.get(cap, 1)}, {engine_dir / 'config.json'}): give at most that, or rebuild")
    ids = [i for i in out["gpu_device_ids"].split(",") if i.strip()]
    if len(ids) != world or not all(i.strip().isdigit() for i in ids):
        raise BuildFailed(f"{where}: gpu_device_ids {out['gpu_device_ids']!r} must list {world} GPU indices, one "
                          f"per rank of this tp{engine.tp}-pp{engine.pp} engine")
    return out


def parameter_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of each top-level `parameters[:] { ... }` block."""
    spans: list[tuple[int, int]] = []
    for m in PARAMETERS.finditer(text):
        if spans and m.start() < spans[-1][1]:
            continue
        depth, j = 0, m.end() - 1
        while j < len(text):
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            j += 1
            if depth == 0:
                break
        spans.append((m.start(), j))
    return spans


def left_outside_parameters(text: str) -> list[str]:
    """The placeholders left where Triton parses a value (outside the parameter blocks; comments ignored)."""
    spans, kept, i = parameter_spans(text), [], 0
    for start, end in spans:
        kept.append(text[i:start])
        i = end
    kept.append(text[i:])
    code = "\n".join(line for line in "".join(kept).splitlines() if not line.lstrip().startswith("#"))
    return sorted(set(PLACEHOLDER.findall(code)))


def fill_text(text: str, vals: dict[str, str]) -> str:
    """What `fill_template.py FILE k:v,...` prints: string.Template(text).safe_substitute(vals)."""
    return string.Template(text).safe_substitute(vals)


def placeholders(templates: Path) -> set[str]:
    return {n for m in MODELS for n in PLACEHOLDER.findall((templates / m / "config.pbtxt").read_text())}


def fill(out: Path, vals: dict[str, str], what: str) -> dict[str, list[str]]:
    """Fill every config.pbtxt of the repository in `out` (a copy of the templates) in place; returns, per model,
    the string parameters left as `${name}`. BuildFailed for a placeholder left where Triton parses a value, or a
    file Triton's own ModelConfig schema refuses (checked where tritonclient is installed: check_schema)."""
    left: dict[str, list[str]] = {}
    for model in MODELS:
        cfg = out / model / "config.pbtxt"
        text = fill_text(cfg.read_text(), vals)
        bad = left_outside_parameters(text)
        if bad:
            raise BuildFailed(f"{what}: {model}/config.pbtxt still has {', '.join('${' + n + '}' for n in bad)} where "
                              "Triton reads a value (not a string parameter): give it under `triton:` for this model "
                              "in models.yaml")
        check_schema(text, f"{what}: {model}/config.pbtxt")
        cfg.write_text(text)
        unset = sorted({n for s, e in parameter_spans(text) for n in PLACEHOLDER.findall(text[s:e])})
        if unset:
            left[model] = unset
    return left


def schema_checker() -> Any:
    """A function parsing config.pbtxt text as Triton's ModelConfig (tritonclient's model_config_pb2 through
    google.protobuf.text_format), or None where tritonclient is not installed (`pip install 'enginebuild[triton]'`)."""
    try:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2
    except (ImportError, RuntimeError):  # tritonclient without its grpc extra raises RuntimeError
        return None
    return lambda text: text_format.Parse(text, model_config_pb2.ModelConfig())


def check_schema(text: str, where: str) -> None:
    """BuildFailed, naming the line, when Triton's own ModelConfig schema refuses the file."""
    parse = schema_checker()
    if parse is None:
        return
    try:
        parse(text)
    except Exception as e:  # text_format.ParseError: "<line>:<col> : ..."
        raise BuildFailed(f"{where} is not a Triton ModelConfig (tritonclient's model_config.proto): "
                          f"{str(e).splitlines()[0]}") from None
