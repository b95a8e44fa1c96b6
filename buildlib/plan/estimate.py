"""Expected build times, for longest-first ordering, CI shards and the forecast: from the evidence recorded in
manifests (an engine's own last build, builds of its model), else from the checkpoint's size."""

from __future__ import annotations

import os
from collections.abc import Callable, Container, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

from ..backends.registry import runner
from ..core.engine import Engine
from ..core.hashing import TreeDigest
from ..core.manifest import MANIFEST, read_manifest, record_of
from ..core.model import ModelSpec, Spec
from ..host.gpu import Host

T = TypeVar("T")


class Evidence(Protocol):
    """What an estimate reads of a plan (a Planner has it all): the host, the project's engines, build records."""

    spec: Spec
    build_records: dict[Path, dict[Path, tuple[float, int]]]  # model_records, per model dir, memoized

    @property
    def host(self) -> Host: ...

    @property
    def known_records(self) -> dict[str, str]: ...

    def build_record(self, engine_dir: Path) -> tuple[float, int] | None: ...

    def checkpoint(self, model: ModelSpec) -> TreeDigest | None: ...


def build_record(engine_dir: Path) -> tuple[float, int] | None:
    """(seconds, GPUs) of the build the engine dir's manifest records, or None (no manifest, no time)."""
    m = read_manifest(engine_dir)
    return record_of(m) if m is not None else None

# Fallback for a checkpoint never built before: trtllm-build handles roughly this many checkpoint
# bytes per second per worker, plus a fixed start-up (imports, CUDA context, plugin setup). Only the
# ordering depends on it, and real timings from manifests replace it after the first build.
BYTES_PER_SECOND = 100 * 2**20
STARTUP_SECONDS = 20.0


@dataclass(frozen=True)
class Estimate:
    """An expected build time and what it rests on: `this engine` (its own last build), `its model` (builds of the
    same model on other archs/configs), or `checkpoint size` (no build recorded: a default rate)."""

    seconds: float
    basis: str
    builds: int  # how many recorded builds it rests on


Records = Callable[[Path], "tuple[float, int] | None"]  # engine dir -> its build record: build_record, or faster


def model_records(model_dir: Path, record: Records = build_record,
                  built: Container[str] = ()) -> dict[Path, tuple[float, int]]:
    """The build record of every engine of a model (`engines/<model>/*/*/`, in sorted order) that has one: a
    listing of the model's dirs and one small manifest read per engine, none where `record` knows it otherwise
    (Planner.build_record). `built`: engine dirs known to hold a manifest (no stat to check it)."""
    out = {}
    for d in _engine_dirs(model_dir):
        if d in built or os.path.exists(os.path.join(d, MANIFEST)):
            r = record(Path(d))
            if r is not None:
                out[Path(d)] = r
    return out


def _engine_dirs(model_dir: Path) -> list[str]:
    """`<model_dir>/*/*/` dirs, sorted (what glob gives, without pathlib's per-entry cost)."""
    out = []
    for arch in _subdirs(os.fspath(model_dir)):
        out += _subdirs(arch)
    return out


def _subdirs(d: str) -> list[str]:
    try:
        with os.scandir(d) as it:
            return sorted(e.path for e in it if e.is_dir() and not e.name.startswith("."))
    except OSError:
        return []


def recorded(engine_dir: Path, workers: int = 1, records: dict[Path, tuple[float, int]] | None = None,
             record: Records = build_record) -> Estimate | None:
    """Sources 1 and 2 of estimate(), or None when no engine of the model was built yet. `records`:
    model_records() of its model, where the caller has them already."""
    own = record(engine_dir)
    if own is not None:
        return Estimate(own[0], "this engine", 1)
    records = model_records(engine_dir.parent.parent) if records is None else records
    others = [seconds * gpus / max(1, workers) for d, (seconds, gpus) in records.items() if d != engine_dir]
    if not others:
        return None
    import statistics  # ~6 ms to import: only when an estimate needs it

    return Estimate(statistics.median(others), "its model", len(others))


def by_checkpoint_size(checkpoint_bytes: int, workers: int = 1, *, bytes_per_second: float = BYTES_PER_SECOND,
                       startup_seconds: float = STARTUP_SECONDS) -> Estimate:
    """Source 3 of estimate(): no build of the model recorded, a default rate over the checkpoint's bytes."""
    return Estimate(startup_seconds + checkpoint_bytes / (bytes_per_second * max(1, workers)), "checkpoint size", 0)


def estimate(engine_dir: Path, workers: int = 1, checkpoint_bytes: int = 0, *,
             bytes_per_second: float = BYTES_PER_SECOND, startup_seconds: float = STARTUP_SECONDS) -> Estimate:
    """How long building this engine is expected to take, from the best evidence available:

    1. the engine dir's own manifest (`built.seconds`): the same model/arch/parallel built before,
       e.g. before an option or toolchain change made it stale;
    2. engines of the same model on other archs/parallel configs (`engines/<model>/*/*/`): the
       median of their seconds × their GPU count / `workers`, since trtllm-build's work is roughly
       the model's size spread over its --workers;
    3. the checkpoint size: startup_seconds + checkpoint_bytes / (bytes_per_second × workers).
    For scheduling only the order matters; reading a few small manifests costs far less than one
    badly placed hour-long build at the end of the run.
    """
    known = recorded(engine_dir, workers)
    if known is not None:
        return known
    return by_checkpoint_size(checkpoint_bytes, workers, bytes_per_second=bytes_per_second,
                              startup_seconds=startup_seconds)


def expected_seconds(engine_dir: Path, workers: int = 1, checkpoint_bytes: int = 0, **rates: float) -> float:
    """estimate(...).seconds: what longest-first ordering sorts by."""
    return estimate(engine_dir, workers, checkpoint_bytes, **rates).seconds


def engine_estimate(planner: Evidence, engine: Engine, workers: int | None = None) -> Estimate:
    """estimate() for an engine of a plan. Its workers: the GPUs its backend wants, capped at this host's GPUs
    of its arch (1 where the host has none), unless given; its checkpoint size comes from the planner's (cached)
    digest, read only where no build of its model was recorded."""
    if workers is None:
        host = len(planner.host.gpus_of(engine.arch, engine.model.gpu_name))
        workers = min(runner(engine.model.backend).gpus(engine, "build"), host) if host else 1
    edir = engine.dir(planner.spec.project)
    mdir = edir.parent.parent
    # Once per model and process (a plan of 5,000 unbuilt engines asks 5,000 times); a build landing later in
    # the run is not seen by later estimates, which only order work.
    if mdir not in planner.build_records:
        planner.build_records[mdir] = model_records(mdir, planner.build_record, planner.known_records)
    known = recorded(edir, workers, planner.build_records[mdir], planner.build_record)
    if known is not None:
        return known  # small JSON reads for built engines; the checkpoint is not touched
    ckpt = planner.checkpoint(engine.model)
    return by_checkpoint_size(sum(s for s, _ in ckpt.files.values()) if ckpt is not None else 0, workers)


def engine_expected_seconds(planner: Evidence, engine: Engine) -> float:
    return engine_estimate(planner, engine).seconds


def order_longest_first(items: Iterable[T], key: Callable[[T], float]) -> list[T]:
    """items sorted by key, largest first; ties keep their given order (sorted is stable with reverse).

    Dispatching the longest jobs first (LPT list scheduling) keeps the makespan near
    max(total GPU-seconds / GPUs, longest job): a long job started last is what stretches a run.
    """
    return sorted(items, key=key, reverse=True)
