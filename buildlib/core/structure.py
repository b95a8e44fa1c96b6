"""The two parts of an engine key: structure (what the engine's code is compiled for) and weights (tensor bytes).

The engine key stays the hash of every field. Its *structure* is the same fields with the checkpoint's
content digest replaced by the checkpoint's structure digest: config.json and every other non-weight file
by content, and each safetensors shard by its header only (every tensor's name, dtype and shape, and the
header's metadata), never by its tensor bytes. Two engines whose structure keys are equal differ in their
weights alone, so a refittable one can be turned into the other by refit instead of a build (steps.build).

Optimization: the structure is computed only where it is needed (writing a manifest, and deciding why a
stale engine is stale), never on a no-op: the key itself does not depend on it. Reading it costs one
header read per shard (8 bytes and the header's JSON), not a pass over the weights.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .checkpoint import BadCheckpoint, safetensors_header
from .hashing import merkle
from .key import diff_fields, key_of

WEIGHT_SUFFIX = ".safetensors"


@dataclass(frozen=True)
class CheckpointStructure:
    """A checkpoint's structure: its digest, one entry per file, and the parsed config.json (for reasons)."""

    digest: str
    files: dict[str, tuple[int, str]]  # relpath -> (0 for a shard's header | size, xxh3-128 of header | content)
    config: dict[str, Any] | None

    def to_json(self) -> dict[str, Any]:
        return {"digest": self.digest, "files": {r: list(v) for r, v in self.files.items()}, "config": self.config}


def _header_digest(path: Path) -> str:
    """xxh3-128 of a shard's header without the data offsets: {name: [dtype, shape]} and __metadata__."""
    header, _ = safetensors_header(path)
    shape = {name: info if name == "__metadata__" else [info["dtype"], info["shape"]] for name, info in header.items()}
    return key_of(shape)


def checkpoint_structure(root: Path, files: dict[str, tuple[int, str]]) -> CheckpointStructure:
    """The structure of a checkpoint dir whose per-file (size, content digest) are `files` (from its TreeDigest).

    A shard that cannot be parsed counts by its content (so any change to it is structural: a full build
    reports what is wrong with it)."""
    entries: dict[str, tuple[int, str]] = {}
    for rel, (size, digest) in files.items():
        entry = (size, digest)
        if rel.endswith(WEIGHT_SUFFIX):
            with contextlib.suppress(OSError, ValueError, BadCheckpoint, KeyError, TypeError, AttributeError):
                entry = (0, _header_digest(root / rel))
        entries[rel] = entry
    try:
        config = json.loads((root / "config.json").read_text())
    except (OSError, ValueError):
        config = None
    return CheckpointStructure(merkle(entries), entries, config if isinstance(config, dict) else None)


def structure_key(fields: dict[str, Any], checkpoint_digest: str) -> str:
    """The key of the engine's structure: its fields with the checkpoint's content digest replaced by its
    structure digest."""
    return key_of({**{k: v for k, v in fields.items() if k != "checkpoint"}, "checkpoint_structure": checkpoint_digest})


def structure_record(fields: dict[str, Any], ckpt: CheckpointStructure) -> dict[str, Any]:
    """What a manifest keeps of the structure: its key and the checkpoint structure it was computed from."""
    return {"key": structure_key(fields, ckpt.digest), **ckpt.to_json()}


def recorded_key(fields: dict[str, Any], record: dict[str, Any]) -> str | None:
    """The structure key a manifest's record vouches for, recomputed from its fields and file entries (an
    entry from a shared store is trusted only if they agree); None when there is none or it disagrees."""
    try:
        digest = merkle({r: (int(v[0]), str(v[1])) for r, v in record["files"].items()})
        skey = structure_key(fields, digest)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError):
        return None
    return skey if skey == record.get("key") and digest == record.get("digest") else None


def structure_reasons(old: dict[str, Any], new: CheckpointStructure) -> list[str]:
    """Why two checkpoint structures differ: `config.json num_hidden_layers 32 -> 40`, `checkpoint
    model.safetensors tensors changed (names, dtypes, shapes or header metadata)`, `checkpoint tokenizer.json
    changed`."""
    reasons: list[str] = []
    old_files = old.get("files") or {}
    if old.get("config") is not None and new.config is not None and old["config"] != new.config:
        reasons += [f"config.json {r}" for r in diff_fields(old["config"], new.config)]
    for rel in sorted(old_files.keys() | new.files.keys()):
        if rel not in new.files:
            reasons.append(f"checkpoint {rel} removed")
        elif rel not in old_files:
            reasons.append(f"checkpoint {rel} added")
        elif list(old_files[rel]) != list(new.files[rel]) and not (rel == "config.json" and reasons):
            what = "tensors changed (names, dtypes, shapes or header metadata)" if new.files[rel][0] == 0 else "changed"
            reasons.append(f"checkpoint {rel} {what}")
    return reasons or ["checkpoint structure changed"]

