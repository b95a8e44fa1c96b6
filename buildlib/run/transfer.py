"""An engine to and from the shared store: restore (verified, then published like a build) and push."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from ..core.engine import Engine
from ..core.key import canonical_json
from ..host.publish import clean_leftovers, publish, temp_dir_for
from ..plan.planner import Planner
from ..store.base import StoreCorrupt, StoreError
from ..store.guarded import GuardedStore, Refused
from .produce import say


def restore(planner: Planner, store: GuardedStore, key: str, fields: dict[str, Any], dest: Path) -> bool:
    """Pull key from the store into a temp dir beside dest, verifying every file (and, under a trust policy, its
    signature: buildlib.store.guarded), then publish. An entry the policy refuses is named with the reason, one line
    each; a corrupt one is reported and removed from the store where this run may write (so the rebuild can replace
    it). False: build instead."""
    try:
        if not store.has(key):
            return False
        clean_leftovers(dest)
        tmp = temp_dir_for(dest)
        try:
            m = store.pull(key, tmp)
            if canonical_json(m.fields) != canonical_json(fields):
                raise StoreCorrupt(f"{store.url}/{key}: its manifest describes another engine than {dest}")
            publish(tmp, dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    except Refused as e:
        for reason in e.reasons:
            say(f"refused store entry {reason}")
        return False
    except StoreCorrupt as e:
        if not store.writable:
            say(f"store entry {key} is corrupt ({e}); building instead (read-only: left in the store)")
            return False
        say(f"store entry {key} is corrupt ({e}); removing it and building instead")
        store.remove(key)
        return False
    except (KeyError, StoreError) as e:
        say(f"store {store.url} unusable for {key} ({e}); building instead")
        return False
    # The digests were verified while writing: remember them, so the next check is stats only.
    planner.cache.store_many([(dest / r, os.stat(dest / r), d) for r, (_, d) in m.outputs.items()])
    return True


def push(store: GuardedStore, key: str, dest: Path, engine: Engine, structure: str | None) -> None:
    """Push the engine (signed, where the run signs); note its structure key, so hosts whose checkpoint differs in
    weights only can refit it. A read-only run writes nothing (it said so once, at the start)."""
    if not store.writable:
        return
    try:
        pushed = store.push(key, dest)
        if structure is not None and engine.model.refit:
            store.note_structure(structure, key)
    except StoreError as e:
        say(f"could not push {engine.id} to {store.url}: {e}")
        return
    signed = f" (signed by {store.signer.identity})" if store.signer is not None else ""
    say(f"pushed {engine.id} to {store.url}{signed}" if pushed else f"{engine.id} was already in {store.url}")
