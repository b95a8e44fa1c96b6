"""manifest.json: the key, every field behind it, and each output's digest; written last. Also the build record
(seconds, GPUs) a manifest keeps, and its one-line encoding that engine stamps carry."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .hashing import digest_files, list_files
from .statcache import StatCache, identity

MANIFEST = "manifest.json"
VALIDATION = "validation.json"  # written by a successful validation run: {"key": <manifest key>, "ok": true, ...}
SCHEMA = 1
# Files in an engine dir that are records about the build, not outputs of it.
SIGNATURE = "model.sig"  # an OpenSSF Model Signing bundle over the engine's files (buildlib.store.signing)
NOT_OUTPUTS = frozenset({MANIFEST, "build.log", VALIDATION, "validate.log", SIGNATURE})


@dataclass
class Manifest:
    key: str
    fields: dict[str, Any]
    outputs: dict[str, list] = field(default_factory=dict)  # relpath -> [size, xxh3-128]
    checkpoint_files: dict[str, list] = field(default_factory=dict)  # relpath -> [size, xxh3-128]
    name: str = ""
    built: dict[str, Any] = field(default_factory=dict)
    structure: dict[str, Any] = field(default_factory=dict)  # buildlib.structure.structure_record (empty: unknown)
    stat: os.stat_result | None = field(default=None, compare=False)  # of the file it was read from

    def to_json(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "name": self.name, "key": self.key, "fields": self.fields,
                "checkpoint_files": self.checkpoint_files, "outputs": self.outputs, "built": self.built,
                **({"structure": self.structure} if self.structure else {})}


# Parsed manifests by (path, dev, inode, size, mtime_ns, ctime_ns): a no-op reads each engine's manifest once
# per process even though state() and validated() both ask. Manifests are replaced by rename (new inode).
_READ: dict[tuple, dict[str, Any]] = {}


def _load(path: str) -> tuple[dict[str, Any], os.stat_result]:
    """The parsed file and the stat of the very file that was read (fstat: no window for a rename between)."""
    with open(path, "rb") as f:
        st = os.fstat(f.fileno())
        k = (path, *identity(st))
        data = _READ.get(k)
        if data is None:
            data = json.loads(f.read())
            if len(_READ) > 20_000:
                _READ.clear()
            _READ[k] = data
    return data, st


def read_manifest(engine_dir: Path) -> Manifest | None:
    """The manifest of an engine dir, or None if absent or unreadable (then it is not fresh)."""
    try:
        data, st = _load(os.path.join(engine_dir, MANIFEST))
        if data.get("schema") != SCHEMA:
            return None
        return Manifest(key=data["key"], fields=data["fields"], outputs=data["outputs"],
                        checkpoint_files=data.get("checkpoint_files", {}), name=data.get("name", ""),
                        built=data.get("built", {}), structure=data.get("structure") or {}, stat=st)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def build_of(m: Manifest) -> dict[str, Any]:
    """The record of the full build behind an engine (`seconds`, `gpus`, ...): its own, or for a refitted engine
    the one it carries from the engine it was refitted from (so build-time estimates never see a refit's)."""
    rec = m.built.get("build") if m.built.get("how") == "refit" else m.built
    return {k: rec[k] for k in ("seconds", "gpus", "at", "host") if k in rec} if isinstance(rec, dict) else {}


def validation_record(engine_dir: Path | str, key: str) -> dict[str, Any] | None:
    """The dir's validation.json when it is about an engine with this key (a pass or a recorded failure)."""
    try:
        with open(os.path.join(engine_dir, VALIDATION), "rb") as f:
            v = json.loads(f.read())
    except (OSError, ValueError):
        return None
    return v if isinstance(v, dict) and v.get("key") == key else None


def validation_vouches(engine_dir: Path, key: str) -> bool:
    """True when the dir's validation.json vouches for an engine with this key."""
    v = validation_record(engine_dir, key)
    return v is not None and v.get("ok") is True


def output_files(out_dir: Path) -> list[Path]:
    return [p for p in list_files(out_dir) if p.relative_to(out_dir).as_posix() not in NOT_OUTPUTS]


def record_outputs(out_dir: Path, cache: StatCache | None) -> dict[str, list]:
    got = digest_files(output_files(out_dir), cache)
    return {p.relative_to(out_dir).as_posix(): [size, d] for p, (size, d) in sorted(got.items())}


def check_outputs(engine_dir: Path, m: Manifest, cache: StatCache | None) -> list[str]:
    """Reasons the recorded outputs no longer match (missing, resized, altered); [] when intact.

    Unchanged outputs cost one stat each through the stat cache; only an output whose stat
    changed is re-read.
    """
    reasons: list[str] = []
    present: list[tuple[str, os.stat_result]] = []
    rels: list[str] = []
    base = os.fspath(engine_dir)
    for rel, (size, _) in m.outputs.items():
        p = os.path.join(base, rel)
        try:
            st = os.stat(p)
        except OSError:
            reasons.append(f"output {rel} missing")
            continue
        if st.st_size != size:
            reasons.append(f"output {rel} altered (size {size} -> {st.st_size})")
        else:
            present.append((p, st))
            rels.append(rel)
    # One batched stat-cache query with the stats just taken; only outputs whose stat changed are re-read.
    hits = cache.lookup_many(present) if cache and present else [None] * len(present)
    unknown = [Path(p) for (p, _), d in zip(present, hits, strict=True) if d is None]
    got = {os.fspath(p): d for p, (_, d) in digest_files(unknown, cache).items()} if unknown else {}
    for rel, (p, _), d in zip(rels, present, hits, strict=True):
        if (d or got[p]) != m.outputs[rel][1]:
            reasons.append(f"output {rel} altered")
    return reasons


def write_json_durably(path: Path, data: dict[str, Any]) -> None:
    """Write, fsync, then rename over `path`, so a reader sees the old file or the whole new one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_manifest(out_dir: Path, m: Manifest) -> None:
    m.built.setdefault("at", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    m.built.setdefault("host", os.uname().nodename)
    write_json_durably(out_dir / MANIFEST, m.to_json())


# -- build records: (seconds, GPUs) of the build behind an engine, for estimates and longest-first ordering ----------
def record_of(m: Manifest) -> tuple[float, int] | None:
    """(seconds, GPUs) of the build a manifest records, or None where it records no time."""
    built = build_of(m)
    seconds = built.get("seconds")
    if not isinstance(seconds, (int, float)) or seconds <= 0:
        return None
    return float(seconds), max(1, len(built.get("gpus") or ()))


def record_text(record: tuple[float, int] | None) -> str:
    """A build record as an engine stamp keeps it (statcache.Stamp.built): `seconds gpus`, or ""."""
    return f"{record[0]!r} {record[1]}" if record is not None else ""


def record_from_text(text: str) -> tuple[float, int] | None:
    if not text:
        return None
    seconds, gpus = text.split()
    return float(seconds), int(gpus)
