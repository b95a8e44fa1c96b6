"""Integrity: re-check an engine dir, or a store entry, against its manifest, reading every byte.

Unlike the planner (which trusts the stat cache for files whose stats did not change), this reads
and hashes everything, so it also finds bit rot and edits that kept size and mtime. Problems are
`altered`, `missing` or `unexpected` files, links where files should be, and a manifest whose fields
do not hash to its key (an entry edited to pass for another engine).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ..core.errors import UserError
from ..core.hashing import hash_file, list_files
from ..core.key import key_of
from ..core.manifest import MANIFEST, NOT_OUTPUTS, read_manifest
from ..plan.planner import Planner
from ..store.base import BUILD_LOG, Store, StoreCorrupt, StoreError, log_digest


def verify_dir(d: Path) -> list[str]:
    """Problems of one dir written by buildlib (engine or converted checkpoint); [] when intact."""
    m = read_manifest(d)
    if m is None:
        return [f"{d}: no readable {MANIFEST}"]
    problems = []
    try:
        if key_of(m.fields) != m.key:
            problems.append(f"{d}/{MANIFEST}: its fields do not hash to its key {m.key}")
    except (TypeError, ValueError):
        problems.append(f"{d}/{MANIFEST}: its fields cannot be hashed")
    try:
        present = {p.relative_to(d).as_posix() for p in list_files(d)}
    except UserError as e:  # a FIFO, a dangling link... inside an engine dir
        return [*problems, str(e)]
    want = dict(m.outputs)
    log = log_digest(m)
    if log is not None:
        want[BUILD_LOG] = log
    for rel, (size, digest) in sorted(want.items()):
        p = d / rel
        if rel not in present:
            problems.append(f"{p}: missing")
        elif p.is_symlink():
            problems.append(f"{p}: is a link, not the file the manifest describes")
        elif os.stat(p).st_size != size or hash_file(p) != digest:
            problems.append(f"{p}: altered (does not match its digest in {MANIFEST})")
    for rel in sorted(present - want.keys() - NOT_OUTPUTS):
        problems.append(f"{d / rel}: unexpected (not in {MANIFEST})")
    return problems


def verify_entry(store: Store, key: str, scratch: Path) -> list[str]:
    """Problems of one store entry: what a pull would refuse (every byte checked), plus unexpected files."""
    problems = []
    scratch.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".verify-", dir=scratch))
    try:
        m = store.pull(key, tmp)
    except StoreCorrupt as e:
        return [str(e)]
    except (KeyError, StoreError) as e:
        return [f"{store.url}/{key}: cannot be read ({e})"]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    expected = {*m.outputs, MANIFEST, BUILD_LOG}
    for rel in sorted(set(store.entry_names(key)) - expected):
        problems.append(f"{store.url}/{key}/{rel}: unexpected (not in {MANIFEST}; never restored)")
    return problems


@dataclass
class Verified:
    """What `doit verify` found: every problem, and how many engine dirs and store entries it read."""

    problems: list[str] = field(default_factory=list)
    dirs: int = 0
    entries: int = 0


def verify_all(planner: Planner, store: Store | None) -> Verified:
    """Every engine dir of the plan that holds a manifest, and every entry of `store` (if any), read whole."""
    out = Verified()
    for e in planner.engines():
        d = e.dir(planner.spec.project)
        if (d / MANIFEST).exists():
            out.dirs += 1
            out.problems += verify_dir(d)
    if store is not None:
        for key in store.keys():  # noqa: SIM118 - Store.keys() lists published entries; a Store is no dict
            out.entries += 1
            out.problems += verify_entry(store, key, planner.spec.project.work_dir)
    return out
