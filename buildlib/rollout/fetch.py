"""`enginebuild fetch`: a serving node takes the engine its channel's release has for its GPUs, verified, and swaps it
in atomically.

    DEST/<key>/          one fetched engine (complete: it is renamed into place after the pull verified it)
    DEST/current         a symlink to <key>: replaced with rename(2), so a reader sees the old engine or the new
    DEST/.fetch.json     what this node applied, newest first: release id, engine, key (for --keep and for refusing
                         an older release than one applied)
    DEST/.enginebuild    the marker: DEST is enginebuild's (a dir of other files is refused, nothing written)

The pull is the store's own (buildlib.store.guarded): every file hashed while written and checked against the
entry's manifest, and under a trust policy the entry's signature checked over exactly the files pulled; the channel
record is checked the same way (buildlib.store.channel). Optimization: an engine already complete under DEST is
not transferred again; swapping back to it (a rollback) costs one rename.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.errors import UserError
from ..core.manifest import read_manifest
from ..host.confine import claim, refusal
from ..host.node import Node
from ..host.publish import fsync_dir, fsync_tree, locked, temp_dir_for
from ..store.base import StoreCorrupt
from ..store.channel import Release, current
from ..store.guarded import GuardedStore
from .fit import Fit, choose, nothing_fits

CURRENT = "current"
STATE = ".fetch.json"
_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")


class NoFit(UserError):
    """No engine of the release fits this node (the one-line reason)."""


@dataclass(frozen=True)
class Fetched:
    release: Release
    chosen: Fit
    path: Path  # DEST/<key>
    transferred: bool
    swapped: bool


def _state(dest: Path) -> list[dict[str, Any]]:
    try:
        got = json.loads((dest / STATE).read_text())
    except (OSError, ValueError):
        return []
    return [a for a in got if isinstance(a, dict) and _KEY.match(str(a.get("key", "")))] if isinstance(got, list) \
        else []


def _write_state(dest: Path, applied: list[dict[str, Any]]) -> None:
    tmp = dest / f".{STATE}.{os.urandom(4).hex()}"
    tmp.write_text(json.dumps(applied, indent=1) + "\n")
    os.replace(tmp, dest / STATE)


def intact(d: Path, key: str) -> bool:
    """Whether d holds the complete engine `key` (its manifest, and every output at its recorded size)."""
    m = read_manifest(d)
    if m is None or m.key != key:
        return False
    try:
        return all((d / rel).stat().st_size == size for rel, (size, _) in m.outputs.items())
    except OSError:
        return False


def _current_key(dest: Path) -> str | None:
    try:
        return os.readlink(dest / CURRENT)
    except OSError:
        return None


def _swap(dest: Path, key: str) -> None:
    """Point DEST/current at DEST/<key> in one rename(2)."""
    link = dest / f".{CURRENT}.{os.urandom(4).hex()}"
    os.symlink(key, link)
    try:
        os.replace(link, dest / CURRENT)
    except BaseException:
        link.unlink(missing_ok=True)
        raise
    fsync_dir(dest)


def _pull(store: GuardedStore, key: str, target: Path) -> None:
    """Pull into a temp dir beside `target`, then rename it into place. Optimization: the files are flushed to disk
    (fsync) in a thread while the signature is checked over them: both take ~0.35 s a GiB here, one the disk's,
    the other the CPU's."""
    tmp = temp_dir_for(target)
    flushing: list[threading.Thread] = []
    errors: list[OSError] = []

    def flush(d: Path) -> None:
        def run() -> None:
            try:
                fsync_tree(d)
            except OSError as e:
                errors.append(e)
        flushing.append(threading.Thread(target=run, name="buildlib-fetch-fsync"))
        flushing[-1].start()

    try:
        try:
            m = store.pull(key, tmp, pulled=flush)
        finally:
            for t in flushing:
                t.join()
        if errors:
            raise UserError(f"cannot write {target}: {errors[0].strerror}")
        if m.key != key:
            raise StoreCorrupt(f"its manifest is of key {m.key}")
        fsync_tree(tmp)  # manifest.json, written last by the pull, and anything the flush ran before
        if target.exists():  # an incomplete copy (a disk that filled, a hand edit): set aside, then replaced
            shutil.rmtree(target)
        os.rename(tmp, target)
    except StoreCorrupt as e:
        raise UserError(f"refused store entry {store.url}/{key}: {e}") from None
    except KeyError:
        raise UserError(f"store {store.url} has no entry {key} (collected by `doit gc`?); the release names it: "
                        "re-release, or roll the channel back") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _prune(dest: Path, applied: list[dict[str, Any]], keep: int) -> list[dict[str, Any]]:
    """Keep the `keep` newest engines this node applied (the current one first); remove the dirs of older ones."""
    kept: list[str] = []
    out = []
    for a in applied:
        if a["key"] in kept or len(kept) < keep:
            if a["key"] not in kept:
                kept.append(a["key"])
            out.append(a)
        elif a["key"] not in kept:
            shutil.rmtree(dest / a["key"], ignore_errors=True)
    return out


def serving(store: GuardedStore, channel: str, model: str) -> Release:
    """The release of `model` in force in `channel`, checked; a UserError saying what to do when there is none."""
    rel = current(store, channel, model)
    if rel is None:
        raise UserError(f"channel {channel} of store {store.url} serves no {model}: release it first "
                        f"(`doit release {channel}`)")
    return rel


def open_dest(dest: Path) -> None:
    why = refusal(dest, "fetch dest", None)
    if why:
        raise UserError(f"--dest {dest} {why}")
    claim(dest)


def fetch(store: GuardedStore, channel: str, model: str, dest: Path, node: Node, tp: int | None = None,
          pp: int | None = None, keep: int = 2, say: Callable[[str], None] = print) -> Fetched:
    """Fetch the engine of `model` that `channel` serves and that fits `node` into `dest` (see the module)."""
    if keep < 1:
        raise UserError(f"--keep {keep}: keep at least the current engine (1)")
    open_dest(dest)
    with locked(dest / CURRENT):  # two fetches on one node take turns
        rel = serving(store, channel, model)
        applied = _state(dest)
        last = next((a for a in applied if a.get("channel") == channel and a.get("model") == model), None)
        if last is not None and str(last.get("release", "")) > rel.id:
            raise UserError(f"refused release {rel.id} of channel {channel}: this node applied the newer release "
                            f"{last['release']}; a store whose newest records were removed? (roll back with "
                            "`doit release --rollback`, which records a new release)")
        chosen, _ = choose(rel.engines, node, tp, pp)
        if chosen is None:
            raise NoFit(nothing_fits(channel, model, rel.engines, node, tp, pp))
        key = chosen.engine["key"]
        if not _KEY.match(key):
            raise UserError(f"refused release record {rel.where}: engine key {key!r} is not a key")
        target = dest / key
        transferred = not intact(target, key)
        if transferred:
            _pull(store, key, target)
        swapped = _current_key(dest) != key
        if swapped:
            _swap(dest, key)
        entry = {"release": rel.id, "channel": channel, "model": model, "engine": chosen.engine["engine"], "key": key}
        _write_state(dest, _prune(dest, [entry, *(a for a in applied if a != entry)], keep))
    return Fetched(rel, chosen, target, transferred, swapped)
