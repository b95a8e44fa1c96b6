"""Stand-in for what tritonserver does when it loads an inflight_batcher_llm model repository, as far as the repository
decides it: every config.pbtxt is parsed as Triton's ModelConfig (tritonclient's model_config_pb2 through
google.protobuf.text_format, as the server parses the file) and named like its dir; the Python models get the
model's config as JSON (parameters as {key: {"string_value": ...}}) in initialize(); the tensorrtllm backend reads its
parameters as libtriton_tensorrtllm does. Tests call load(repo); any failure is an exception naming the model.

The C++ backend's parameter reads mirror triton_backend/inflight_batcher_llm/src of TensorRT-LLM 1.2.x:
- model_state.cc ModelState::GetParameter<std::string>: "Cannot find parameter with name: X" when the block is
  missing; the typed reads (int, float, bool) convert the string (std::stoi...; bool: True/true/TRUE/1 or
  False/false/FALSE/0, else "Cannot convert X to a boolean"). LoadParameters() reads gpu_device_ids and
  participant_ids inside try/catch (unset or unparsable: a warning).
- model_instance_state.cc: getBatchingTypeFromParams() reads gpt_model_type without a fallback (v1, inflight_batching
  or inflight_fused_batching, else "Invalid gpt_model_type"); getGuidedDecodingConfigFromParams() reads tokenizer_dir,
  xgrammar_tokenizer_info_path and guided_decoding_backend without a fallback and takes the literal "${...}" (or "")
  as unset; gpt_model_path and encoder_model_path are read in try/catch and must exist (both empty: "Both encoder and
  decoder model paths are empty"); every other parameter is optional (try/catch, default on any error).
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import types
from pathlib import Path
from typing import Any

MODELS = ("tensorrt_llm", "preprocessing", "postprocessing", "ensemble", "tensorrt_llm_bls")


def parse(path: Path) -> Any:
    """The file as Triton's ModelConfig protobuf (text_format.ParseError for what Triton would refuse)."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def as_json(config: Any) -> dict[str, Any]:
    from google.protobuf.json_format import MessageToDict

    return MessageToDict(config, preserving_proto_field_name=True)


class ModelState:
    """ModelState::GetParameter of model_state.cc, over the model's config JSON."""

    def __init__(self, config: dict[str, Any]):
        self.config = config

    def get(self, name: str) -> str:
        params = self.config.get("parameters")
        if params is None:
            raise RuntimeError("Model config doesn't have a parameters section")
        if name not in params:
            raise RuntimeError(f"Cannot find parameter with name: {name}")
        return params[name].get("string_value", "")

    def get_int(self, name: str) -> int:
        return int(self.get(name))  # std::stoi: std::invalid_argument for "${x}"

    def get_float(self, name: str) -> float:
        return float(self.get(name))

    def get_bool(self, name: str) -> bool:
        val = self.get(name)
        if val in ("True", "true", "TRUE", "1"):
            return True
        if val in ("False", "false", "FALSE", "0"):
            return False
        raise RuntimeError(f"Cannot convert {val} to a boolean.")


OPTIONAL_INT = ("max_tokens_in_paged_kv_cache", "sink_token_length", "max_beam_width", "iter_stats_max_iterations",
                "request_stats_max_iterations", "cancellation_check_period_ms", "stats_check_period_ms", "num_nodes",
                "lora_cache_max_adapter_size", "lora_cache_optimal_adapter_size", "cuda_graph_cache_size",
                "kv_cache_host_memory_bytes", "lora_cache_host_memory_bytes")
OPTIONAL_FLOAT = ("kv_cache_free_gpu_mem_fraction", "cross_kv_cache_fraction", "lora_cache_gpu_memory_fraction",
                  "gpu_weights_percent")
OPTIONAL_BOOL = ("kv_cache_onboard_blocks", "enable_kv_cache_reuse", "multi_block_mode", "enable_context_fmha_fp32_acc",
                 "cuda_graph_mode", "enable_trt_overlap", "normalize_log_probs", "enable_chunked_context",
                 "speculative_decoding_fast_logits", "exclude_input_in_output")


def load_tensorrtllm(config: dict[str, Any]) -> dict[str, Any]:
    """The parameter reads of ModelState::LoadParameters and ModelInstanceState's constructor; returns what was read."""
    state, got = ModelState(config), {}
    for name in ("gpu_device_ids", "participant_ids"):
        try:
            got[name] = [[int(i) for i in part.split(",")] for part in state.get(name).split(";")]
        except (RuntimeError, ValueError):
            got[name] = None  # "... is not specified, will be automatically set"
    gpt_model_type = state.get("gpt_model_type")  # no fallback
    if gpt_model_type not in ("V1", "v1", "inflight_batching", "inflight_fused_batching"):
        raise RuntimeError("Invalid gpt_model_type. Must be v1/inflight_batching/inflight_fused_batching.")
    got["gpt_model_type"] = gpt_model_type
    for names, read in ((OPTIONAL_INT, state.get_int), (OPTIONAL_FLOAT, state.get_float),
                        (OPTIONAL_BOOL, state.get_bool)):
        for name in names:
            try:
                got[name] = read(name)
            except (RuntimeError, ValueError):
                got[name] = None  # "... is not specified, will use default value"
    # getGuidedDecodingConfigFromParams(): no fallback for these three; the literal placeholder means unset.
    tokenizer_dir = state.get("tokenizer_dir")
    info = state.get("xgrammar_tokenizer_info_path")
    backend = state.get("guided_decoding_backend")
    got["guided_decoding"] = None
    if backend not in ("", "${guided_decoding_backend}") and info not in ("", "${xgrammar_tokenizer_info_path}"):
        if not os.path.exists(info):
            raise RuntimeError(f"Xgrammar's tokenizer info path at {info} does not exist.")
        if backend != "xgrammar":
            raise RuntimeError("Guided decoding is currently supported with 'xgrammar' backend. Invalid "
                               "guided_decoding_backend parameter provided.")
        got["guided_decoding"] = backend
    got["tokenizer_dir"] = tokenizer_dir
    paths = {}
    for name in ("gpt_model_path", "encoder_model_path"):
        try:
            path = state.get(name)
            if not os.path.exists(path):
                raise RuntimeError(f"model path at {path} does not exist.")
            paths[name] = path
        except RuntimeError:
            paths[name] = ""
    if not paths["gpt_model_path"] and not paths["encoder_model_path"]:
        raise RuntimeError("Both encoder and decoder model paths are empty")
    got.update(paths)
    return got


def _pb_utils() -> types.ModuleType:
    """The bits of triton_python_backend_utils that the models' initialize() use."""
    mod = types.ModuleType("triton_python_backend_utils")
    mod.using_decoupled_model_transaction_policy = (  # type: ignore[attr-defined]
        lambda config: bool(config.get("model_transaction_policy", {}).get("decoupled", False)))
    return mod


def load_python(model_dir: Path, config: dict[str, Any]) -> Any:
    """Import <model>/1/model.py and call TritonPythonModel().initialize() as the python backend does."""
    sys.modules.setdefault("triton_python_backend_utils", _pb_utils())
    spec = importlib.util.spec_from_file_location(f"standin_triton_{model_dir.name}", model_dir / "1" / "model.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.TritonPythonModel()
    model.initialize({"model_config": json.dumps(config), "model_name": model_dir.name, "model_version": "1",
                      "model_repository": str(model_dir)})
    return model


def load(repo: Path) -> dict[str, Any]:
    """Load every model of the repository; returns {model: what its initialize or the C++ backend read}."""
    out: dict[str, Any] = {}
    for name in MODELS:
        config = as_json(parse(repo / name / "config.pbtxt"))
        if config.get("name") != name:
            raise RuntimeError(f"{name}: config.pbtxt names model {config.get('name')!r}, its dir is {name!r}")
        if config.get("backend") == "tensorrtllm":
            out[name] = load_tensorrtllm(config)
        elif config.get("backend") == "python":
            if name == "tensorrt_llm":
                raise RuntimeError("tensorrt_llm with backend python: not what buildlib fills (tensorrtllm)")
            out[name] = vars(load_python(repo / name, config))
        elif config.get("platform") == "ensemble":
            out[name] = [step.get("model_name") for step in config["ensemble_scheduling"]["step"]]
        else:
            raise RuntimeError(f"{name}: unknown backend {config.get('backend')!r}")
    return out
