"""The engine key: xxh3-128 of the canonical JSON of every field that shapes an engine."""

from __future__ import annotations

import json
from typing import Any

import xxhash


def canonical_json(obj: Any) -> str:
    """Sorted keys, no whitespace, UTF-8: the same fields give the same bytes on every host."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def key_of(fields: dict[str, Any]) -> str:
    return xxhash.xxh3_128_hexdigest(canonical_json(fields).encode())


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """{'build': {'max_batch_size': 8}} -> {'build.max_batch_size': 8}; lists stay values."""
    if isinstance(obj, dict) and obj:
        out: dict[str, Any] = {}
        for k in sorted(obj):
            out.update(flatten(obj[k], f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: obj}


def _show(v: Any) -> str:
    return "unset" if v is None else (v if isinstance(v, str) else canonical_json(v))


def diff_fields(old: dict[str, Any], new: dict[str, Any], skip: tuple[str, ...] = ()) -> list[str]:
    """Per-field reasons, e.g. `build.max_batch_size 8 -> 64`, `toolchain.tensorrt_llm 1.2.0 -> 1.2.1`."""
    a, b = flatten(old), flatten(new)
    reasons = []
    for k in sorted(a.keys() | b.keys()):
        if k.startswith(skip) or a.get(k) == b.get(k):
            continue
        reasons.append(f"{k} {_show(a.get(k))} -> {_show(b.get(k))}")
    return reasons
