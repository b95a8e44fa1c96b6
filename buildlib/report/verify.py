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
from ..core.manifest import MANIFEST, NOT_OUTPUTS, SIGNATURE, read_manifest
from ..plan.planner import Planner
from ..store.base import BUILD_LOG, Store, StoreCorrupt, StoreError, log_digest
from ..store.guarded import VALIDATIONS, GuardedStore
from ..store.signing import Verifier, check_file


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


def verify_entry(store: Store, key: str, scratch: Path, verifier: Verifier | None = None) -> list[str]:
    """Problems of one store entry: what a pull would refuse (every byte checked), unexpected files, and with a
    `verifier`, a signature that does not verify against it over exactly the entry's files."""
    problems = []
    scratch.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".verify-", dir=scratch))
    try:
        m = store.pull(key, tmp)
        why = verifier.check(tmp, tmp / SIGNATURE) if verifier is not None else None
        if why is not None:
            problems.append(f"{store.url}/{key}: {why}")
    except StoreCorrupt as e:
        return [str(e)]
    except (KeyError, StoreError) as e:
        return [f"{store.url}/{key}: cannot be read ({e})"]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    expected = {*m.outputs, MANIFEST, BUILD_LOG, SIGNATURE}
    for rel in sorted(set(store.entry_names(key)) - expected):
        problems.append(f"{store.url}/{key}/{rel}: unexpected (not in {MANIFEST}; never restored)")
    return problems


def verify_store(store: GuardedStore, scratch: Path) -> tuple[int, list[str]]:
    """(entries read, problems) of every entry of every namespace of the store (the top level, each signer's).
    Under the store's trust policy an entry that no trusted signer signed is a problem, a trusted signer's entry is
    checked against its signature, and so is each validation record in a trusted signer's namespace."""
    trusted = {v.identity: v for v in store.verifiers}
    count, problems = 0, []
    for ident, scope in store.scopes():
        for key in scope.keys():  # noqa: SIM118 - Store.keys() lists published entries; a Store is no dict
            count += 1
            problems += verify_entry(scope, key, scratch, trusted.get(ident))
            if trusted and ident not in trusted:
                why = f"signed by {ident}, which the trust policy does not name" if ident else "unsigned"
                problems.append(f"{scope.url}/{key}: {why}; a reader with the trust policy refuses it")
        if ident in trusted:
            problems += _records(scope, trusted[ident])
    return count, problems


def _records(scope: Store, verifier: Verifier) -> list[str]:
    """Validation records in a trusted signer's namespace that its signature does not vouch for."""
    out = []
    for key in scope._list_notes(VALIDATIONS):
        for name in scope._list_notes(f"{VALIDATIONS}/{key}"):
            if not name.endswith(".json"):
                continue
            data = scope._get_note(f"{VALIDATIONS}/{key}/{name}")
            sig = scope._get_note(f"{VALIDATIONS}/{key}/{name}.sig")
            why = "no signature" if sig is None else (check_file(verifier, data, name, sig) if data else "unreadable")
            if why is not None:
                out.append(f"{scope.url}/{VALIDATIONS}/{key}/{name}: validation record {why}")
    return out


@dataclass
class Verified:
    """What `doit verify` found: every problem, and how many engine dirs and store entries it read."""

    problems: list[str] = field(default_factory=list)
    dirs: int = 0
    entries: int = 0


def verify_all(planner: Planner, store: GuardedStore | None) -> Verified:
    """Every engine dir of the plan that holds a manifest, and every entry of `store` (if any), read whole."""
    out = Verified()
    for e in planner.engines():
        d = e.dir(planner.spec.project)
        if (d / MANIFEST).exists():
            out.dirs += 1
            out.problems += verify_dir(d)
    if store is not None:
        out.entries, problems = verify_store(store, planner.spec.project.work_dir)
        out.problems += problems
    return out
