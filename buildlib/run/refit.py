"""A weights-only change made by refit, not a build: a refittable engine of the same structure (here, else in the
store) with the new weights, through the same temp dir, manifest and atomic publish as a build."""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..backends.registry import runner
from ..backends.runner import Job
from ..core.engine import Engine
from ..core.errors import BuildFailed
from ..core.layout import checkpoint_dir
from ..core.manifest import Manifest, build_of, check_outputs, read_manifest
from ..core.structure import recorded_key
from ..host import progress
from ..host.gpu import Gpu
from ..host.publish import temp_dir_for
from ..host.slots import describe
from ..plan.planner import Planner
from ..plan.state import EngineState
from ..store.base import StoreCorrupt, StoreError
from . import transfer
from .produce import finish_engine, produce, say, slots


def refit(planner: Planner, engine: Engine, st: EngineState, converted: Path | None, gpus: Sequence[Gpu] | None,
           priority: float) -> bool:
    """Produce the engine by refitting a refittable engine of the same structure (the one here, else the
    store's) with the new weights: same temp dir, manifest and atomic publish as a build, and the manifest
    says `refit of <old key>`. False, having said why, when the refit cannot be done: then it is built."""
    backend = runner(engine.model.backend)
    project = planner.spec.project
    dest = engine.dir(project)
    source_key = st.refit_of or st.refit_store
    assert source_key is not None
    where = "the engine here" if st.refit_of else planner.store.url if planner.store else "the store"
    with slots(planner, engine, backend.gpus(engine, "refit"), gpus, priority, f"build:{engine.id}") as held, \
            progress.step(project.work_dir, f"build:{engine.id}", "refit", [g.index for g in held], priority):
        say(f"refitting {engine.id} (weights only) from {where}, key {source_key}"
            + (f" on {describe(held)}" if held else ""))
        t0 = time.monotonic()
        last_build: dict[str, Any] = {}  # the source's build record, kept so forecasts see build times, not refits

        def make(tmp: Path) -> None:
            job = Job(engine, checkpoint_dir(planner.spec, engine.model), converted, tmp, held, tmp / "build.log",
                      project.work_dir, project.root)
            if st.refit_of:
                last_build.update(build_of(_check_source(planner, dest, source_key)))
                backend.refit(job, dest)
            else:
                src = temp_dir_for(dest)  # made after _produce cleaned leftovers; a killed run's copy is cleaned next
                try:
                    last_build.update(build_of(_pull_source(planner, engine, st, source_key, src)))
                    backend.refit(job, src)
                finally:
                    shutil.rmtree(src, ignore_errors=True)

        def finish(tmp: Path) -> None:
            finish_engine(planner, engine, st, tmp, {
                "how": "refit", "refit_of": source_key, "seconds": round(time.monotonic() - t0, 3),
                "gpus": [g.name for g in held], "gpu_indices": [g.index for g in held], "build": last_build})

        try:
            produce(dest, f"refit:{engine.id}", make, finish)
        except (BuildFailed, StoreError, StoreCorrupt) as e:
            say(f"refit of {engine.id} failed ({str(e).splitlines()[0]}); building it instead")
            return False
    say(f"refitted {engine.id} in {time.monotonic() - t0:.1f}s (refit of {source_key}) -> {dest}")
    if planner.store is not None:
        transfer.push(planner.store, st.key, dest, engine, planner.keys.structure_key(engine, st.fields))
    return True


def _check_source(planner: Planner, dest: Path, key: str) -> Manifest:
    """The engine here is the one the plan named, with every output intact (a damaged one is not refitted)."""
    m = read_manifest(dest)
    if m is None or m.key != key:
        raise BuildFailed(f"the engine in {dest} changed since it was planned (its key is no longer {key})")
    damaged = check_outputs(dest, m, planner.cache)
    if damaged:
        raise BuildFailed(f"the engine in {dest} is damaged ({'; '.join(damaged)})")
    return m


def _pull_source(planner: Planner, engine: Engine, st: EngineState, key: str, into: Path) -> Manifest:
    """Pull the store's same-structure engine (every file verified) and check that its recorded structure is
    this engine's."""
    store = planner.store
    assert store is not None and st.fields is not None
    m = store.pull(key, into)
    if recorded_key(m.fields, m.structure) != planner.keys.structure_key(engine, st.fields):
        raise StoreCorrupt(f"{store.url}/{key}: its structure is not that of {engine.id}")
    return m
