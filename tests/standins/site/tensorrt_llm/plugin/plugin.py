"""Stand-in for tensorrt_llm/plugin/plugin.py (1.2.x, pydantic era): PluginConfig fields and trtllm-build flags."""

from __future__ import annotations

import argparse
from typing import Any

from ..logger import logger

_DTYPES = ("auto", "float16", "float32", "bfloat16", "int32", None)

# name -> (kind, default, options); kind "dtype" is Optional[Literal[...]] (None spelled "disable" on the CLI),
# "bool" a feature flag (enable/disable), "int" a plain int. Order as in the real PluginConfig.
FIELDS: dict[str, tuple[str, Any, tuple[Any, ...]]] = {
    "bert_attention_plugin": ("dtype", "auto", _DTYPES),
    "gpt_attention_plugin": ("dtype", "auto", _DTYPES),
    "gemm_plugin": ("dtype", None, ("auto", "float16", "float32", "bfloat16", "int32", "fp8", "nvfp4", None)),
    "gemm_swiglu_plugin": ("dtype", None, ("fp8", None)),
    "fp8_rowwise_gemm_plugin": ("dtype", None, _DTYPES),
    "qserve_gemm_plugin": ("dtype", None, _DTYPES),
    "identity_plugin": ("dtype", None, _DTYPES),
    "nccl_plugin": ("dtype", "auto", _DTYPES),
    "lora_plugin": ("dtype", None, _DTYPES),
    "dora_plugin": ("bool", False, ()),
    "weight_only_groupwise_quant_matmul_plugin": ("dtype", None, _DTYPES),
    "weight_only_quant_matmul_plugin": ("dtype", None, _DTYPES),
    "smooth_quant_plugins": ("bool", True, ()),
    "smooth_quant_gemm_plugin": ("dtype", None, _DTYPES),
    "layernorm_quantization_plugin": ("dtype", None, _DTYPES),
    "rmsnorm_quantization_plugin": ("dtype", None, _DTYPES),
    "quantize_per_token_plugin": ("bool", False, ()),
    "quantize_tensor_plugin": ("bool", False, ()),
    "moe_plugin": ("dtype", "auto", _DTYPES),
    "mamba_conv1d_plugin": ("dtype", "auto", _DTYPES),
    "low_latency_gemm_plugin": ("dtype", None, ("fp8", None)),
    "low_latency_gemm_swiglu_plugin": ("dtype", None, ("fp8", None)),
    "gemm_allreduce_plugin": ("dtype", None, ("float16", "bfloat16", None)),
    "context_fmha": ("bool", True, ()),
    "bert_context_fmha_fp32_acc": ("bool", False, ()),
    "paged_kv_cache": ("optbool", None, ()),
    "remove_input_padding": ("bool", True, ()),
    "norm_quant_fusion": ("bool", False, ()),
    "reduce_fusion": ("bool", False, ()),
    "user_buffer": ("bool", False, ()),
    "tokens_per_block": ("int", 32, ()),
    "use_paged_context_fmha": ("bool", True, ()),
    "use_fp8_context_fmha": ("bool", True, ()),
    "fuse_fp4_quant": ("bool", False, ()),
    "multiple_profiles": ("bool", False, ()),
    "paged_state": ("bool", True, ()),
    "streamingllm": ("bool", False, ()),
    "manage_weights": ("bool", False, ()),
    "use_fused_mlp": ("bool", True, ()),
    "pp_reduce_scatter": ("bool", False, ()),
}

# Only these become trtllm-build arguments (same list and order as the real cli_plugin_args).
cli_plugin_args = [
    "bert_attention_plugin", "gpt_attention_plugin", "gemm_plugin", "gemm_swiglu_plugin", "fp8_rowwise_gemm_plugin",
    "lora_plugin", "dora_plugin", "moe_plugin", "mamba_conv1d_plugin", "nccl_plugin", "low_latency_gemm_plugin",
    "low_latency_gemm_swiglu_plugin", "gemm_allreduce_plugin",
    "context_fmha", "bert_context_fmha_fp32_acc", "remove_input_padding", "tokens_per_block",
    "use_paged_context_fmha", "use_fp8_context_fmha", "fuse_fp4_quant", "multiple_profiles", "paged_state",
    "streamingllm", "norm_quant_fusion", "reduce_fusion", "user_buffer", "use_fused_mlp", "pp_reduce_scatter",
]


class PluginConfig:
    """Plugin options; "auto" means the model dtype (resolved when read, as the real __getattribute__ does)."""

    def __init__(self, **values: Any) -> None:
        self.dtype = "float16"
        self.values: dict[str, Any] = {name: default for name, (_, default, _) in FIELDS.items()}
        self.explicitly_disable_gemm_plugin = False
        for name, value in values.items():
            if name in FIELDS:  # extra="ignore", as the real model
                self.set(name, value)

    def set(self, name: str, value: Any) -> None:
        kind, _, options = FIELDS[name]
        if value == "enable":
            value = True
        elif value == "disable":
            value = False if kind in ("bool", "optbool") else None
        if kind == "dtype" and value not in options:
            raise ValueError(f"PluginConfig.{name}: input should be one of {options}, got {value!r}")
        if kind in ("bool", "optbool") and not (isinstance(value, bool) or (kind == "optbool" and value is None)):
            raise ValueError(f"PluginConfig.{name}: input should be a valid boolean, got {value!r}")
        if kind == "int" and (isinstance(value, bool) or not isinstance(value, int)):
            raise ValueError(f"PluginConfig.{name}: input should be a valid integer, got {value!r}")
        self.values[name] = value
        logger.info(f"Set PluginConfig.{name} to {value}.")

    def get(self, name: str) -> Any:
        value = self.values[name]
        return self.dtype if value == "auto" else value

    @classmethod
    def from_arguments(cls, args: argparse.Namespace) -> PluginConfig:
        values = vars(args)
        obj = cls(**{k: v for k, v in values.items() if k in FIELDS})
        if values.get("gemm_plugin") == "disable":
            obj.explicitly_disable_gemm_plugin = True
        return obj

    def validate(self) -> None:
        """PluginConfig.validate(): plugins that SM 100 does not implement (get_sm_version() of the current GPU)."""
        from .._standin import visible_gpus

        gpus = visible_gpus()
        sm = int(gpus[0]["compute_cap"].replace(".", "")) if gpus else 0
        if sm == 100:
            for name in ("gemm_swiglu_plugin", "fp8_rowwise_gemm_plugin", "low_latency_gemm_plugin",
                         "low_latency_gemm_swiglu_plugin", "bert_context_fmha_fp32_acc"):
                val = self.values[name]
                if val is not None and val is not False:
                    raise NotImplementedError(f"{name}={val} is not supported on SM {sm}.")

    def to_dict(self) -> dict[str, Any]:
        return {"dtype": self.dtype, **{name: self.get(name) for name in FIELDS}}


def add_plugin_argument(parser: argparse._ActionsContainer) -> argparse._ActionsContainer:
    """The same flags, defaults and choices as the real add_plugin_argument()."""
    for name in FIELDS:
        if name not in cli_plugin_args:
            continue
        kind, default, options = FIELDS[name]
        if kind == "dtype":
            if name != "gemm_plugin":
                default = default if default else "disable"
            parser.add_argument("--" + name, type=str, default=default,
                                choices=[x if x else "disable" for x in options])
        elif kind == "bool":
            parser.add_argument("--" + name, type=str, default="enable" if default else "disable",
                                choices=["enable", "disable"])
        else:
            parser.add_argument("--" + name, type=int, default=default)
    return parser
