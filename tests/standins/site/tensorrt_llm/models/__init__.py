"""Stand-in for tensorrt_llm.models: a small MODEL_MAP (HF architecture -> model class) and AutoModelForCausalLM."""

from __future__ import annotations

from .automodel import AutoModelForCausalLM
from .modeling_utils import PretrainedConfig, PretrainedModel, QuantConfig


class LLaMAForCausalLM(PretrainedModel):
    hf_family = "llama"


class MistralLikeLLaMAForCausalLM(LLaMAForCausalLM):
    """The real MODEL_MAP maps MistralForCausalLM to LLaMAForCausalLM; only the HF defaults differ here."""

    hf_family = "mistral"


class QWenForCausalLM(PretrainedModel):
    hf_family = "qwen2"


class GPTNeoXForCausalLM(PretrainedModel):
    hf_family = "gpt_neox"


MODEL_MAP: dict[str, type[PretrainedModel]] = {
    "LlamaForCausalLM": LLaMAForCausalLM,
    "MistralForCausalLM": MistralLikeLLaMAForCausalLM,
    "Qwen2ForCausalLM": QWenForCausalLM,
    "GPTNeoXForCausalLM": GPTNeoXForCausalLM,
}

__all__ = ["MODEL_MAP", "AutoModelForCausalLM", "GPTNeoXForCausalLM", "LLaMAForCausalLM", "PretrainedConfig",
           "PretrainedModel", "QWenForCausalLM", "QuantConfig"]
