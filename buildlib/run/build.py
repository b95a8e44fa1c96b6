"""Convert and build: an engine made from its checkpoint, unless it is fresh, restorable from the store, or a
refit of one of the same structure. No doit here: doit actions, Ray workers and tests call these functions."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from ..backends.registry import recipe, runner
from ..backends.runner import Job
from ..core.engine import Engine
from ..core.errors import BuildFailed
from ..core.key import key_of
from ..core.layout import checkpoint_dir, converted_dir
from ..core.manifest import Manifest, read_manifest, record_outputs, write_manifest
from ..host import progress
from ..host.confine import claim
from ..host.gpu import Gpu
from ..host.publish import locked
from ..host.slots import describe, gpu_slots
from ..plan.planner import Planner
from ..plan.state import BLOCKED, FRESH
from . import caches, transfer
from .produce import check_inputs, finish_engine, produce, say, slots, waiting
from .refit import refit


def convert(planner: Planner, engine: Engine) -> None:
    """HF checkpoint -> the backend's intermediate checkpoint, content-addressed by convert key."""
    backend = runner(engine.model.backend)
    fields = planner.keys.convert_key_fields(engine)
    if fields is None:
        raise BuildFailed(f"convert:{engine.convert_id}: checkpoint not generated yet")
    key = key_of(fields)
    dest = converted_dir(planner.spec.project, key)
    with locked(dest, waiting(f"convert:{engine.convert_id}")):
        m = read_manifest(dest)
        if m is not None and m.key == key:
            return
        ckpt = planner.keys.checkpoint(engine.model)
        assert ckpt is not None
        check_inputs(planner, engine.model)

        want = backend.gpus(engine, "convert")
        if want and not planner.host.gpus:
            raise BuildFailed(f"convert:{engine.convert_id} calibrates quantization on a GPU; this host has none")

        def make(tmp: Path) -> None:
            with gpu_slots(planner.host.gpus, want) as gpus, \
                    progress.step(planner.spec.project.work_dir, f"convert:{engine.convert_id}", "convert",
                                  [g.index for g in gpus]):
                backend.convert(Job(engine, checkpoint_dir(planner.spec, engine.model), None, tmp, gpus,
                                    tmp / "build.log", planner.spec.project.work_dir, planner.spec.project.root))

        def finish(tmp: Path) -> None:
            write_manifest(tmp, Manifest(key, fields, record_outputs(tmp, planner.cache),
                                         {r: list(v) for r, v in ckpt.files.items()}, engine.convert_id))

        t0 = time.monotonic()
        produce(dest, f"convert:{engine.convert_id}", make, finish)
        say(f"converted {engine.convert_id} in {time.monotonic() - t0:.1f}s")


class Outcome(NamedTuple):
    """What build() did: the engine's final state (fresh/blocked), why it is blocked, and how it got there
    (`up to date`, `restored`, `built`, `blocked`): the run's tally line counts these."""

    state: str
    why: str | None
    how: str


def _blocked(engine: Engine, why: str) -> Outcome:
    say(f"{engine.id}: {why}; not built here")
    return Outcome(BLOCKED, why, "blocked")


def build(planner: Planner, engine: Engine, gpus: Sequence[Gpu] | None = None,
          priority: float = 0.0) -> Outcome:
    """Build one engine unless it is fresh; returns what it did (Outcome).

    Under the per-engine lock the state is decided again, so a concurrent run that just built
    this engine makes this call a no-op instead of a second build. With a store configured, an
    engine whose key is there is restored (verified) instead of built, even on a host that could
    not build it; a built engine is pushed. One this host cannot build, with no store to restore it from,
    is decided without the lock (fresh or blocked): nothing is written for it, not even its lock file's dir.
    """
    backend = runner(engine.model.backend)
    dest = engine.dir(planner.spec.project)
    claim(planner.spec.project.engines_dir)  # checked when models.yaml was read (buildlib.confine)
    store = planner.store
    if store is None and backend.blocked(engine, planner.host):
        # Fresh or blocked, nothing is written here: no lock, so no dir is made for an engine of another host.
        st = planner.state(engine)
        return Outcome(FRESH, None, "up to date") if st.state == FRESH else _blocked(engine, st.reasons[0])
    with locked(dest, waiting(f"build:{engine.id}")):
        st = planner.state(engine)
        if st.state == FRESH:
            return Outcome(FRESH, None, "up to date")
        if store is not None and st.key:
            with progress.step(planner.spec.project.work_dir, f"build:{engine.id}", "restore"):
                restored = transfer.restore(planner, store, st.key, st.fields or {}, dest)
            if restored:
                say(f"restored {engine.id} from {store.url}")
                return Outcome(FRESH, None, "restored")
        if st.state == BLOCKED:
            return _blocked(engine, st.reasons[0])
        assert st.key and st.fields
        ckpt = planner.keys.checkpoint(engine.model)
        assert ckpt is not None
        converted = planner.keys.converted_dir(engine) if recipe(engine.model.backend).has_convert else None
        if converted is not None and read_manifest(converted) is None:
            convert(planner, engine)
        elif converted is None:
            check_inputs(planner, engine.model)  # the backend reads the checkpoint itself
        if engine.model.refit and st.refit_of is None and store is not None:
            st.refit_store = planner.store_refit_source(st)
        if (st.refit_of or st.refit_store) and refit(planner, engine, st, converted, gpus, priority):
            return Outcome(FRESH, None, "refitted")
        with slots(planner, engine, backend.gpus(engine, "build"), gpus, priority, f"build:{engine.id}") as held, \
                progress.step(planner.spec.project.work_dir, f"build:{engine.id}", "build", [g.index for g in held],
                              priority):
            say(f"building {engine.id} ({'; '.join(st.reasons)})" + (f" on {describe(held)}" if held else ""))
            cache = backend.build_cache(engine, tuple(held), planner.spec.project.work_dir) if store else None
            if store is not None and cache is not None:
                say(f"build cache {cache[0]}: {caches.warm(store, *cache)}")
            before = caches.fingerprint(cache[1]) if cache is not None and cache[1].exists() else None
            t0 = time.monotonic()

            def make(tmp: Path) -> None:
                backend.build(Job(engine, checkpoint_dir(planner.spec, engine.model), converted, tmp,
                                  held, tmp / "build.log", planner.spec.project.work_dir,
                                  planner.spec.project.root))

            def finish(tmp: Path) -> None:
                finish_engine(planner, engine, st, tmp, {
                    "seconds": round(time.monotonic() - t0, 3), "gpus": [g.name for g in held],
                    "gpu_indices": [g.index for g in held]})

            produce(dest, f"build:{engine.id}", make, finish)
        say(f"built {engine.id} in {time.monotonic() - t0:.1f}s -> {dest}")
        if store is not None:
            transfer.push(store, st.key, dest, engine, planner.keys.structure_key(engine, st.fields))
            if cache is not None:
                say(f"build cache {cache[0]}: {caches.share(store, *cache, before)}")
        return Outcome(FRESH, None, "built")
