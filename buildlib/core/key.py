"""The engine key: xxh3-128 of the canonical JSON of every field that shapes an engine."""

from __future__ import annotations

import json
from json.encoder import c_make_encoder, encode_basestring  # type: ignore[attr-defined]
from typing import Any

import xxhash

_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
# The C encoder that _ENCODER.encode builds on every call (json.encoder.JSONEncoder.iterencode), built once:
# the same bytes at ~half the cost (json.dumps with options also builds a JSONEncoder per call), and a no-op
# over 10,000 engines encodes ~20,000 objects. markers=None: fields are never cyclic.
_C_ENCODE = c_make_encoder(None, _ENCODER.default, encode_basestring, None, ":", ",", True, False, False) \
    if c_make_encoder is not None else None


def canonical_json(obj: Any) -> str:
    """Sorted keys, no whitespace, UTF-8: the same fields give the same bytes on every host."""
    return "".join(_C_ENCODE(obj, 0)) if _C_ENCODE is not None else _ENCODER.encode(obj)


def key_of(fields: dict[str, Any]) -> str:
    return xxhash.xxh3_128_hexdigest(canonical_json(fields).encode())


class KeyTemplate:
    """key_of(fields) for many field dicts that share every top-level field but a few (`own`): the canonical
    JSON of the shared ones is made once, and a key costs the JSON of the own ones, a join and one hash. The
    same bytes as canonical_json(fields): sorted keys and fixed separators make a dict's JSON the join of its
    members' JSON. The planner makes one per model, so a no-op over 10,000 engines does not re-encode each
    engine's ~60 build options."""

    def __init__(self, shared: dict[str, Any], own: tuple[str, ...], encoded: dict[str, str] | None = None):
        """`encoded`: the canonical JSON of some shared values, made already (the planner's of a build it has
        seen for another model)."""
        assert not shared.keys() & set(own), "a field is either shared or own"
        encoded = encoded or {}
        self._pieces: list[str] = []  # the JSON between the own fields' values, in key order
        self._order: list[int] = []  # which own field goes into each gap
        text = "{"
        for k in sorted([*shared, *own]):
            text += ("," if text != "{" else "") + f"{encode_basestring(k)}:"
            if k in shared:
                text += encoded[k] if k in encoded else canonical_json(shared[k])
            else:
                self._pieces.append(text)
                self._order.append(own.index(k))
                text = ""
        self._pieces.append(text + "}")

    def key(self, *values: Any) -> str:
        """The key of the shared fields plus the own ones, given in `own` order."""
        pieces = self._pieces
        body = [pieces[0]]
        for i, slot in enumerate(self._order):
            body += (canonical_json(values[slot]), pieces[i + 1])
        return xxhash.xxh3_128_hexdigest("".join(body).encode())


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
        # compared as the key sees them: a list read back from a manifest equals the tuple the spec holds
        if k.startswith(skip) or a.get(k) == b.get(k) or canonical_json(a.get(k)) == canonical_json(b.get(k)):
            continue
        reasons.append(f"{k} {_show(a.get(k))} -> {_show(b.get(k))}")
    return reasons
