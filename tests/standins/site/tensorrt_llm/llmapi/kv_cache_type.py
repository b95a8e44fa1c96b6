"""Stand-in for tensorrt_llm/llmapi/kv_cache_type.py: KVCacheType(str, Enum), case-insensitive lookup."""

from __future__ import annotations

from enum import Enum


class KVCacheType(str, Enum):
    CONTINUOUS = "continuous"
    PAGED = "paged"
    DISABLED = "disabled"

    @classmethod
    def _missing_(cls, value: object) -> KVCacheType | None:
        if isinstance(value, str):
            for member in cls:
                if member.value.lower() == value.lower():
                    return member
        return None
