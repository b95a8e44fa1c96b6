"""Stand-in for tensorrt_llm/lora_manager.py: LoraManager.LORA_MODULE_IDS (trtllm-build's choices) and the adapter
reads of load_from_ckpt() (each adapter's config is opened; its tensors are not)."""

from __future__ import annotations

import json
import os
from typing import ClassVar


class LoraManager:
    LORA_MODULE_IDS: ClassVar[dict[str, int]] = {
        "attn_qkv": 0, "attn_q": 1, "attn_k": 2, "attn_v": 3, "attn_dense": 4, "mlp_h_to_4h": 5,
        "mlp_4h_to_h": 6, "mlp_gate": 7, "cross_attn_qkv": 8, "cross_attn_q": 9, "cross_attn_k": 10,
        "cross_attn_v": 11, "cross_attn_dense": 12, "moe_h_to_4h": 13, "moe_4h_to_h": 14, "moe_gate": 15,
        "moe_router": 16, "mlp_router": 17, "mlp_gate_up": 18,
    }

    def load_from_ckpt(self, model_dirs_or_files: list[str], model_config: object = None,
                       runtime_mapping: object = None, uids: list[str] | None = None,
                       ckpt_source: str = "hf") -> None:
        """LoraManager.load_from_ckpt(): `hf` -> load_from_hf(), which reads each dir's adapter_config.json (a missing
        adapter is FileNotFoundError there); `nemo` -> load_from_nemo(), which opens each .nemo file."""
        assert ckpt_source in ("hf", "nemo"), f"{ckpt_source} is not supported, only support 'hf' and 'nemo'"
        for path in model_dirs_or_files:
            if ckpt_source == "hf":
                with open(os.path.join(path, "adapter_config.json")) as f:
                    json.load(f)
            else:
                with open(path, "rb"):
                    pass
