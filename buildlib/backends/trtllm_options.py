"""The trtllm-build (TensorRT-LLM 1.2.x) option set as data: validate models.yaml `build:`, fill defaults, emit argv."""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..core.model import CONTROL_RE, MAX_SIZE

# Sources, read at the 1.2.x line (pydantic BuildConfig/PluginConfig, Oct 2025 on):
#   tensorrt_llm/commands/build.py   parse_arguments(): flags, aliases, defaults from BuildConfig.model_fields
#   tensorrt_llm/plugin/plugin.py    PluginConfig fields + cli_plugin_args + add_plugin_argument()
#   tensorrt_llm/builder.py          BuildConfig defaults; update_kv_cache_type(); optimize_model_with_config()
#   tensorrt_llm/llmapi/kv_cache_type.py  KVCacheType(str, Enum), case-insensitive
#   tensorrt_llm/lora_manager.py     LoraManager.LORA_MODULE_IDS (choices of --lora_target_modules)
# docs/tensorrt-llm-contract.md lists each call with the real function it was checked against.

# The one release series this table was checked against; the backend accepts only this series (1.0 and 1.1
# have their own parsers and defaults, which no table here describes).
TRTLLM_SERIES = "1.2"

_ENABLE_DISABLE = ("enable", "disable")
# DefaultPluginDtype = Literal["auto", "float16", "float32", "bfloat16", "int32", None]; None is spelled "disable".
_PLUGIN_DTYPES = ("auto", "float16", "float32", "bfloat16", "int32", "disable")
_LORA_MODULES = (
    "attn_qkv", "attn_q", "attn_k", "attn_v", "attn_dense", "mlp_h_to_4h", "mlp_4h_to_h", "mlp_gate",
    "cross_attn_qkv", "cross_attn_q", "cross_attn_k", "cross_attn_v", "cross_attn_dense",
    "moe_h_to_4h", "moe_4h_to_h", "moe_gate", "moe_router", "mlp_router", "mlp_gate_up",
)


@dataclass(frozen=True)
class BuildOption:
    name: str  # without leading dashes, e.g. "max_batch_size"
    default: object  # the 1.2.x default (None where argparse default is None)
    kind: str  # "int" | "float" | "str" | "flag" (store_true) | "choice" | "list" (nargs +)
    choices: tuple[str, ...] = ()


def _opts(*opts: BuildOption) -> dict[str, BuildOption]:
    return {o.name: o for o in opts}


def _int(name: str, default: int | None) -> BuildOption:
    return BuildOption(name, default, "int")


def _flag(name: str) -> BuildOption:
    return BuildOption(name, False, "flag")


def _choice(name: str, default: str | None, choices: tuple[str, ...]) -> BuildOption:
    return BuildOption(name, default, "choice", choices)


BUILD_OPTIONS: dict[str, BuildOption] = _opts(
    # Limits / shapes (BuildConfig field defaults).
    _int("max_batch_size", 2048),
    _int("max_input_len", 1024),
    _int("max_seq_len", None),  # alias --max_decoder_seq_len; None: deduced from the checkpoint at build time
    _int("max_beam_width", 1),
    _int("max_num_tokens", 8192),
    _int("opt_num_tokens", None),
    _int("max_encoder_input_len", 1024),
    _int("max_prompt_embedding_table_size", 0),  # alias --max_multimodal_len
    # argparse.SUPPRESS in build.py, BuildConfig default None; resolved per model (resolve_for_model).
    _choice("kv_cache_type", None, ("continuous", "paged", "disabled")),
    _choice("profiling_verbosity", "layer_names_only", ("layer_names_only", "detailed", "none")),
    _flag("strip_plan"),
    _flag("weight_sparsity"),
    _flag("weight_streaming"),
    _flag("fast_build"),
    _flag("enable_debug_output"),
    # Logits.
    _choice("logits_dtype", None, ("float16", "float32")),
    _flag("gather_context_logits"),
    _flag("gather_generation_logits"),
    _flag("gather_all_token_logits"),
    # LoRA. lora_dir: directories (relative to models.yaml); their contents are part of the engine key.
    BuildOption("lora_dir", None, "list"),
    _choice("lora_ckpt_source", "hf", ("hf", "nemo")),
    BuildOption("lora_target_modules", None, "list", _LORA_MODULES),
    _int("max_lora_rank", 64),
    # Speculative decoding.
    _choice("speculative_decoding_mode", None,
            ("draft_tokens_external", "lookahead_decoding", "medusa", "explicit_draft_tokens", "eagle")),
    _int("max_draft_len", 0),
    # Plugins (PluginConfig fields listed in cli_plugin_args); a disabled plugin is spelled "disable".
    _choice("bert_attention_plugin", "auto", _PLUGIN_DTYPES),
    _choice("gpt_attention_plugin", "auto", _PLUGIN_DTYPES),
    _choice("gemm_plugin", None, ("auto", "float16", "float32", "bfloat16", "int32", "fp8", "nvfp4", "disable")),
    _choice("gemm_swiglu_plugin", "disable", ("fp8", "disable")),
    _choice("fp8_rowwise_gemm_plugin", "disable", _PLUGIN_DTYPES),
    _choice("lora_plugin", "disable", _PLUGIN_DTYPES),
    _choice("dora_plugin", "disable", _ENABLE_DISABLE),
    _choice("moe_plugin", "auto", _PLUGIN_DTYPES),
    _choice("mamba_conv1d_plugin", "auto", _PLUGIN_DTYPES),
    _choice("nccl_plugin", "auto", _PLUGIN_DTYPES),
    _choice("low_latency_gemm_plugin", "disable", ("fp8", "disable")),
    _choice("low_latency_gemm_swiglu_plugin", "disable", ("fp8", "disable")),
    _choice("gemm_allreduce_plugin", "disable", ("float16", "bfloat16", "disable")),
    # Plugin features (bool fields, spelled enable/disable on the command line).
    _choice("context_fmha", "enable", _ENABLE_DISABLE),
    _choice("bert_context_fmha_fp32_acc", "disable", _ENABLE_DISABLE),
    _choice("remove_input_padding", "enable", _ENABLE_DISABLE),
    _int("tokens_per_block", 32),
    _choice("use_paged_context_fmha", "enable", _ENABLE_DISABLE),
    _choice("use_fp8_context_fmha", "enable", _ENABLE_DISABLE),
    _choice("fuse_fp4_quant", "disable", _ENABLE_DISABLE),
    _choice("multiple_profiles", "disable", _ENABLE_DISABLE),
    _choice("paged_state", "enable", _ENABLE_DISABLE),
    _choice("streamingllm", "disable", _ENABLE_DISABLE),
    _choice("norm_quant_fusion", "disable", _ENABLE_DISABLE),
    _choice("reduce_fusion", "disable", _ENABLE_DISABLE),
    _choice("user_buffer", "disable", _ENABLE_DISABLE),
    _choice("use_fused_mlp", "enable", _ENABLE_DISABLE),
    _choice("pp_reduce_scatter", "disable", _ENABLE_DISABLE),
)

# Options of the 1.2.x parser that the adapter owns; models.yaml may not set them. Why each one:
_RESERVED_WHY: dict[str, str] = {
    "checkpoint_dir": "the adapter passes the converted checkpoint of this model/tp/pp",
    "output_dir": "the adapter builds into a temp dir beside engines/... and publishes it atomically",
    "model_config": "builds from a config .json with dummy weights instead of the checkpoint",
    "build_config": "a build_config .json replaces every limit flag and would bypass option resolution and the key",
    "model_cls_file": "loads arbitrary model code that is not part of the engine key",
    "model_cls_name": "goes with model_cls_file, which is not allowed",
    "workers": "derived from the GPUs given to the build; it changes scheduling, not the engine",
    "input_timing_cache": "the timing cache is kept per (GPU name, TensorRT version) by the adapter",
    "output_timing_cache": "the timing cache is kept per (GPU name, TensorRT version) by the adapter",
    "log_level": "logging only; the adapter sets it and keeps build.log",
    "visualize_network": "debug export of the network as ONNX, not an engine property",
    "dry_run": "builds no engine at all; the engine dir would never be complete",
    "monitor_memory": "a build-time memory monitor for debugging, not an engine property",
    "paged_kv_cache": "deprecated in 1.x; use kv_cache_type: paged | continuous | disabled",
}
RESERVED: frozenset[str] = frozenset(_RESERVED_WHY)

# Alternate spellings that the 1.2.x parser accepts (argparse aliases) -> canonical dest.
ALIASES: dict[str, str] = {
    "max_decoder_seq_len": "max_seq_len",
    "max_multimodal_len": "max_prompt_embedding_table_size",
}

_PARALLEL = "trtllm-build 1.x has no --{0}: parallelism comes from `parallel:` (tp/pp) in models.yaml, " \
            "which sets the checkpoint's mapping"
# Options that older releases had and 1.x rejects ("unrecognized arguments").
REMOVED: dict[str, str] = {
    "max_output_len": "removed in TensorRT-LLM 0.12 (1.x exits with 'unrecognized arguments'); "
                      "set max_seq_len (= max_input_len + output tokens) instead",
    "tp_size": _PARALLEL.format("tp_size"),
    "pp_size": _PARALLEL.format("pp_size"),
    "cp_size": _PARALLEL.format("cp_size"),
    "world_size": _PARALLEL.format("world_size"),
    "auto_parallel": "the auto-parallel group (--auto_parallel, --gpus_per_node, --cluster_key) was removed in 1.x; "
                     "parallelism comes from `parallel:`",
    "gpus_per_node": "removed in 1.x together with --auto_parallel",
    "cluster_key": "removed in 1.x together with --auto_parallel",
    "timing_cache": "the 0.8 name of the timing cache; the adapter manages the timing cache itself",
    "builder_opt": "removed in TensorRT-LLM 0.14",
    "strongly_typed": "no longer an option: 1.x always builds strongly typed networks",
    "max_prompt_embedding_table": "did you mean max_prompt_embedding_table_size?",
    "use_custom_all_reduce": "removed in 1.x (the all-reduce strategy is chosen at runtime)",
    "multi_block_mode": "removed from trtllm-build; it is a runtime option in 1.x",
    "enable_xqa": "removed from trtllm-build in 1.x",
    "context_fmha_fp32_acc": "renamed: use bert_context_fmha_fp32_acc (or the runtime option)",
    "use_context_fmha_for_generation": "removed from trtllm-build in 1.x",
    "attention_qk_half_accumulation": "removed from trtllm-build in 1.x",
    "lookup_plugin": "no longer a trtllm-build option in 1.x",
    "weight_only_precision": "a checkpoint-conversion option: set quantization in models.yaml instead",
    "use_weight_only": "a checkpoint-conversion option: set quantization in models.yaml instead",
    "dtype": "the dtype comes from the checkpoint: set `dtype:` on the model, not under build:",
}

_POSITIVE = frozenset({"max_batch_size", "max_input_len", "max_seq_len", "max_beam_width", "max_num_tokens",
                       "opt_num_tokens", "max_lora_rank", "tokens_per_block"})


class OptionError(ValueError):
    """A models.yaml `build:` option that trtllm-build 1.2.x would reject; `message` says how to fix it."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def _suggest(name: str) -> str:
    canon = name.lstrip("-").replace("-", "_")
    if canon != name and (canon in BUILD_OPTIONS or canon in ALIASES):
        return f"write it as `{canon}`"
    known = [*BUILD_OPTIONS, *ALIASES]
    close = difflib.get_close_matches(canon, known, n=3, cutoff=0.6)
    if close:
        return "did you mean " + " or ".join(f"`{c}`" for c in close) + "?"
    return "see `trtllm-build --help` (TensorRT-LLM 1.2.x) for the options"


def _check_name(name: object) -> str:
    if not isinstance(name, str):
        raise OptionError(str(name), "option names are strings")
    canon = name.lstrip("-").replace("-", "_")
    if canon in RESERVED:
        raise OptionError(name, f"set by enginebuild itself ({_RESERVED_WHY[canon]}); remove it from build:")
    if canon in REMOVED:
        raise OptionError(name, f"not a trtllm-build 1.x option: {REMOVED[canon]}")
    if name in ALIASES:
        return ALIASES[name]
    if name not in BUILD_OPTIONS:
        raise OptionError(name, f"unknown trtllm-build option; {_suggest(name)}")
    return name


def _type_name(v: object) -> str:
    return "a boolean" if isinstance(v, bool) else f"a {type(v).__name__} ({v!r})"


def _check_value(opt: BuildOption, value: object) -> object:
    """Validate one user value; return its canonical form (what the resolved dict holds)."""
    if value is None:
        return opt.default
    if opt.kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise OptionError(opt.name, f"expects an integer, got {_type_name(value)}")
        low = 1 if opt.name in _POSITIVE else 0
        if value < low:
            raise OptionError(opt.name, f"must be >= {low}, got {value}")
        if value > MAX_SIZE:
            raise OptionError(opt.name, f"must be <= {MAX_SIZE} (TensorRT sizes are 32-bit), got {value}")
        return value
    if opt.kind == "float":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise OptionError(opt.name, f"expects a number, got {_type_name(value)}")
        return float(value)
    if opt.kind == "str":
        if not isinstance(value, str):
            raise OptionError(opt.name, f"expects a string, got {_type_name(value)}")
        return value
    if opt.kind == "flag":
        if not isinstance(value, bool):
            raise OptionError(opt.name, f"is a flag: write true or false, got {_type_name(value)}")
        return value
    if opt.kind == "choice":
        if isinstance(value, bool):
            # YAML turns yes/no/on/off/true/false into booleans; map them onto the CLI spelling.
            if opt.choices == _ENABLE_DISABLE:
                return "enable" if value else "disable"
            if value is False and "disable" in opt.choices:
                return "disable"
            raise OptionError(opt.name, f"expects one of {', '.join(opt.choices)}, got {_type_name(value)}")
        if not isinstance(value, str):
            raise OptionError(opt.name, f"expects one of {', '.join(opt.choices)}, got {_type_name(value)}")
        v = value.lower() if opt.name == "kv_cache_type" else value  # KVCacheType._missing_ is case-insensitive
        if v not in opt.choices:
            close = difflib.get_close_matches(v, opt.choices, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise OptionError(opt.name, f"invalid choice {value!r}{hint}; choose from {', '.join(opt.choices)}")
        return v
    if opt.kind == "list":
        if isinstance(value, str) or not isinstance(value, list | tuple) or not value:
            raise OptionError(opt.name, f"expects a non-empty list (`[a, b]`), got {_type_name(value)}")
        out: list[str] = []  # kept as a tuple: a ModelSpec is hashable
        for item in value:
            if not isinstance(item, str) or not item or CONTROL_RE.search(item):
                raise OptionError(opt.name, f"list items must be non-empty strings without control characters, "
                                  f"got {_type_name(item)}")
            if opt.choices and item not in opt.choices:
                raise OptionError(opt.name, f"invalid choice {item!r}; choose from {', '.join(opt.choices)}")
            out.append(item)
        return tuple(out)
    raise AssertionError(f"unknown option kind {opt.kind!r}")


def resolve_build_options(user: dict[str, object]) -> dict[str, object]:
    """Validate a models.yaml `build:` mapping against trtllm-build 1.2.x; return every option, defaults filled.

    Applies the resolution that follows from the options alone: gather_all_token_logits ->
    gather_context_logits and gather_generation_logits (commands/build.py main; the two are kept, the
    shorthand is cleared, so equivalent spellings give equal dicts). Two values stay None here because
    1.2.x derives them from the checkpoint: max_seq_len (from max_position_embeddings, at build time)
    and kv_cache_type when unset (resolve_for_model: it depends on the model architecture). Keys come
    back in sorted order.
    """
    if not isinstance(user, dict):
        raise OptionError("build", f"expects a mapping of trtllm-build options, got {_type_name(user)}")
    given: dict[str, object] = {}
    for raw, value in user.items():
        name = _check_name(raw)
        if name in given:
            raise OptionError(str(raw), f"set twice (`{name}` and an alias of it)")
        given[name] = _check_value(BUILD_OPTIONS[name], value)
    resolved: dict[str, object] = {n: given.get(n, o.default) for n, o in BUILD_OPTIONS.items()}
    if resolved["gather_all_token_logits"]:
        resolved["gather_context_logits"] = resolved["gather_generation_logits"] = True
        resolved["gather_all_token_logits"] = False
    _check_combinations(resolved)
    return {k: resolved[k] for k in sorted(resolved)}


_SWIGLU = ("gemm_swiglu_plugin", "low_latency_gemm_swiglu_plugin")


def _check_combinations(r: dict[str, object]) -> None:
    """The cross-option checks trtllm-build 1.2.x makes before or while building a rank (RuntimeError /
    assert there): refused here, before any GPU time is spent."""
    if r["gather_context_logits"] and isinstance(r["max_draft_len"], int) and r["max_draft_len"] > 0:
        raise OptionError("gather_context_logits", "not supported with max_draft_len > 0; "
                          "use gather_generation_logits to get the accepted tokens' logits")
    if r["multiple_profiles"] == "enable" and r["opt_num_tokens"] is not None:
        raise OptionError("opt_num_tokens", "cannot be set while multiple_profiles is enabled")
    if r["streamingllm"] == "enable":
        raise OptionError("streamingllm", "no longer supported by TensorRT-LLM 1.x (the build asserts); remove it")
    # builder.py optimize_model_with_config(): "GemmSwiGLU plugin requires --use_fused_mlp flag".
    for name in _SWIGLU:
        if r[name] != "disable" and r["use_fused_mlp"] != "enable":
            raise OptionError(name, "requires use_fused_mlp: enable (trtllm-build raises 'GemmSwiGLU plugin "
                              "requires --use_fused_mlp flag')")


RECURRENT = frozenset({"MambaForCausalLM", "RecurrentGemmaForCausalLM"})  # paged_state, not paged_kv_cache
# commands/build.py main(): a checkpoint quantized with anything else turns use_fused_mlp off.
FUSED_MLP_QUANT = frozenset({"FP8", "MIXED_PRECISION"})
# plugin.py PluginConfig.validate(): NotImplementedError for these on SM 100 (not on 103, 110, 120).
SM100_UNSUPPORTED = ("gemm_swiglu_plugin", "fp8_rowwise_gemm_plugin", "low_latency_gemm_plugin",
                     "low_latency_gemm_swiglu_plugin", "bert_context_fmha_fp32_acc")


def check_target(r: dict[str, object], sm: int) -> None:
    """What PluginConfig.validate() refuses for the GPU a build runs on (trtllm-build calls it first)."""
    if sm != 100:
        return
    for name in SM100_UNSUPPORTED:
        if r[name] not in ("disable", False, None):
            raise OptionError(name, f"{name}={r[name]} is not supported on SM 100 (PluginConfig.validate "
                              "raises NotImplementedError); disable it for sm100")


def check_quantization(r: dict[str, object], quant_algo: str | None) -> None:
    """Checks that depend on the checkpoint's quantization (known from models.yaml)."""
    if quant_algo is None or quant_algo in FUSED_MLP_QUANT:
        return
    for name in _SWIGLU:
        if r[name] != "disable":
            raise OptionError(name, f"needs use_fused_mlp, which trtllm-build turns off for {quant_algo} "
                              "checkpoints (only FP8 and MIXED_PRECISION keep it); disable it or use fp8")


def needs_architecture(option: Callable[[str], object]) -> bool:
    """Whether resolve_for_model() depends on the model architecture (most option sets do not, so the
    planner reads no checkpoint config for them). `option`: a resolved option by name (ModelSpec.build_option)."""
    kv = option("kv_cache_type")
    return option("pp_reduce_scatter") == "enable" or option("paged_state") == "disable" or kv not in (None, "paged")


def resolve_for_model(r: dict[str, object], architecture: str | None) -> dict[str, object]:
    """The model-dependent part of 1.2.x's resolution and its asserts; returns what the build will use.

    - kv_cache_type (BuildConfig.update_kv_cache_type): for Mamba and RecurrentGemma it follows
      paged_state (enable -> paged, disable -> continuous), and an explicit value that contradicts
      paged_state asserts; every other model gets paged when unset.
    - pp_reduce_scatter (commands/build.py build_model) asserts unless the model is Mixtral.
    """
    if r["pp_reduce_scatter"] == "enable" and architecture != "MixtralForCausalLM":
        raise OptionError("pp_reduce_scatter", f"only supported for MixtralForCausalLM (trtllm-build asserts 'PP "
                          f"reduce scatter is only supported in the mixtral model'); this model is {architecture}")
    kv = r["kv_cache_type"]
    if architecture in RECURRENT:
        paged_state = r["paged_state"] == "enable"
        if kv is None:
            kv = "paged" if paged_state else "continuous"
        elif paged_state != (kv == "paged"):
            raise OptionError("kv_cache_type", f"{kv} contradicts paged_state: {r['paged_state']} for {architecture} "
                              "(BuildConfig.update_kv_cache_type asserts); set paged_state: "
                              f"{'enable' if kv == 'paged' else 'disable'}, or leave kv_cache_type unset")
    elif kv is None:
        kv = "paged"
    return {**r, "kv_cache_type": kv}


def to_argv(given: dict[str, object], root: str = ".") -> list[str]:
    """argv for trtllm-build: only the options that differ from the 1.2.x defaults.

    The key records every resolved option; the installed release is checked to be of the series this
    table describes (TRTLLM_SERIES), so a default left out here is that release's default. `given`
    is the resolved dict from models.yaml (kv_cache_type None: left to trtllm-build, which resolves it
    as resolve_for_model() does). lora_dir entries are resolved against `root` (models.yaml's dir).
    """
    argv: list[str] = []
    for name in sorted(given):
        opt = BUILD_OPTIONS.get(name)
        if opt is None:
            raise OptionError(name, f"not an option of trtllm-build 1.2.x; {_suggest(name)}")
        value = given[name]
        if value is None or value == opt.default:
            continue
        if opt.kind == "flag":
            if value is True:
                argv.append(f"--{name}")
        elif opt.kind == "list":
            assert isinstance(value, list | tuple), name
            items = [os.path.join(root, str(v)) for v in value] if name == "lora_dir" else [str(v) for v in value]
            argv += [f"--{name}", *items]
        else:
            argv += [f"--{name}", str(value)]
    return argv


def build_schema() -> dict[str, Any]:
    """JSON Schema of each `build:` option, from BUILD_OPTIONS (the table resolve_build_options checks against):
    null means the default; YAML booleans are accepted where the validator maps them (enable/disable)."""

    def one(opt: BuildOption) -> dict[str, Any]:
        if opt.kind == "int":
            t: dict[str, Any] = {"type": "integer", "minimum": 1 if opt.name in _POSITIVE else 0, "maximum": MAX_SIZE}
        elif opt.kind == "float":
            t = {"type": "number"}
        elif opt.kind == "str":
            t = {"type": "string"}
        elif opt.kind == "flag":
            t = {"type": "boolean"}
        elif opt.kind == "choice":
            t = {"enum": list(opt.choices)}
            if opt.choices == _ENABLE_DISABLE:
                t = {"anyOf": [t, {"type": "boolean"}]}
            elif "disable" in opt.choices:
                t = {"anyOf": [t, {"const": False}]}
        else:
            item: dict[str, Any] = {"enum": list(opt.choices)} if opt.choices else {"type": "string", "minLength": 1}
            t = {"type": "array", "minItems": 1, "items": item}
        return {"anyOf": [t, {"type": "null"}], "description": f"trtllm-build --{opt.name} (1.2.x default: "
                f"{opt.default!r})"}

    out = {name: one(opt) for name, opt in BUILD_OPTIONS.items()}
    out.update({alias: {**out[name], "description": f"alias of {name}"} for alias, name in ALIASES.items()})
    return out
