"""Stand-in for tensorrt_llm/models/automodel.py: AutoModelForCausalLM dispatching on HF architectures[0]."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..mapping import Mapping
from .modeling_utils import PretrainedModel, QuantConfig


class AutoModelForCausalLM:
    @staticmethod
    def get_trtllm_model_class(hf_model_or_dir: str | os.PathLike, trust_remote_code: bool = False,
                               has_speculative_model: bool = False) -> type[PretrainedModel]:
        from . import MODEL_MAP

        hf_dir = Path(hf_model_or_dir)
        assert (hf_dir / "config.json").exists(), "Please provide a Hugging Face model as the input to the LLM API."
        hf_config = json.loads((hf_dir / "config.json").read_text())
        archs = hf_config.get("architectures")
        if has_speculative_model:
            hf_arch = "MedusaForCausalLM"
        elif archs:
            hf_arch = archs[0]
        elif "mamba" in str(hf_config.get("model_type", "")):
            hf_arch = "MambaForCausalLM"
        else:
            hf_arch = None
        trtllm_model_cls = MODEL_MAP.get(hf_arch)
        if trtllm_model_cls is None:
            raise NotImplementedError(
                f"The given huggingface model architecture {hf_arch} is not supported in TRT-LLM yet")
        return trtllm_model_cls

    @staticmethod
    def from_hugging_face(hf_model_or_dir: str | os.PathLike, dtype: str = "auto", mapping: Mapping | None = None,
                          quant_config: QuantConfig | None = None, **kwargs: Any) -> PretrainedModel:
        cls = AutoModelForCausalLM.get_trtllm_model_class(hf_model_or_dir)
        return cls.from_hugging_face(hf_model_or_dir, dtype, mapping, quant_config, **kwargs)
