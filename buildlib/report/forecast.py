"""What the pending work costs before anyone spends it: GPU-hours per arch and wall time on a number of GPUs.

Pending: every engine that needs a build (stale or missing, here or on a host of its arch), except those the
store can restore (a download, not GPU time). Each one's build time comes from plan.estimate's evidence (its
own last build, or builds of its model on other archs/configs scaled by GPUs); where its model was never built,
from builds of other models scaled by checkpoint bytes (a proxy for parameters) and GPUs; only with no build
recorded at all, from a default rate. Every figure says it is an estimate and how many builds it rests on.

Wall time on N GPUs of an arch: the builds placed longest first, each on the GPUs that free up first (the
scheduler's own order), so it is at least max(GPU-hours / N, the longest build).
"""

from __future__ import annotations

import functools
import heapq
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..backends.registry import runner
from ..core.manifest import MANIFEST, read_manifest
from ..core.model import GPU_ARCH_RE
from ..plan.estimate import Estimate, build_record, engine_estimate
from ..plan.planner import Planner
from ..plan.state import BLOCKED, MISSING, STALE, EngineState


@dataclass
class ArchForecast:
    arch: str
    builds: list[tuple[float, int]] = field(default_factory=list)  # (seconds, GPUs) per pending build
    bases: dict[str, int] = field(default_factory=dict)  # basis -> engines estimated from it
    evidence: int = 0  # recorded builds the estimates rest on (summed over engines)
    host_gpus: int = 0
    refits: int = 0  # pending weights-only updates: refits, not builds (seconds to minutes; not forecast)

    def wall_seconds(self, gpus: int) -> float:
        """Longest first, each build on the `g` GPUs that free up first (a build waits for all of them)."""
        free = [0.0] * gpus
        heapq.heapify(free)
        end = 0.0
        for seconds, g in sorted(self.builds, reverse=True):
            took = [heapq.heappop(free) for _ in range(min(g, gpus))]
            start = max(took)
            for _ in took:
                heapq.heappush(free, start + seconds)
            end = max(end, start + seconds)
        return end


def _fleet_rate(planner: Planner) -> tuple[float, int] | None:
    """GPU-seconds per checkpoint byte over every engine built here (median), and how many builds: what scales one
    model's builds to another's size."""
    rates = []
    for m in planner.spec.project.engines_dir.glob(f"*/*/*/{MANIFEST}"):
        built, manifest = build_record(m.parent), read_manifest(m.parent)  # parsed once: the manifest cache
        size = sum(v[0] for v in manifest.checkpoint_files.values()) if manifest else 0
        if built is not None and size > 0:
            rates.append(built[0] * built[1] / size)
    return (statistics.median(rates), len(rates)) if rates else None


def refits(s: EngineState) -> bool:
    """Stale in its weights only, with a refittable engine of its structure here or in the store."""
    return s.state in (STALE, MISSING) and not s.store and bool(s.refit_of or s.refit_store)


def needs_build(planner: Planner, s: EngineState) -> bool:
    """Stale or missing, here or (blocked) on a host of its arch, and not in the store."""
    if s.store or s.state not in (STALE, MISSING, BLOCKED) or refits(s):
        return False
    if s.state == BLOCKED:  # e.g. restored here but not validated: built already, only another host can check it
        m = read_manifest(s.engine.dir(planner.spec.project))
        return m is None or m.key != s.key
    return True


def forecast(planner: Planner, states: Sequence[EngineState]) -> dict[str, ArchForecast]:
    """Per arch, the pending builds of `states` with their estimated seconds and GPUs."""
    out: dict[str, ArchForecast] = {}
    rate = functools.cache(lambda: _fleet_rate(planner))  # read on first need only
    for s in states:
        if refits(s):
            out.setdefault(s.engine.arch, ArchForecast(s.engine.arch,
                                                       host_gpus=len(planner.host.gpus_of(s.engine.arch)))).refits += 1
        if not needs_build(planner, s):
            continue
        e = s.engine
        gpus = max(1, runner(e.model.backend).gpus(e, "build"))
        est = engine_estimate(planner, e, workers=gpus)
        if est.basis == "checkpoint size":
            ckpt = planner.checkpoint(e.model)
            size = sum(n for n, _ in ckpt.files.values()) if ckpt is not None else 0
            fleet = rate()
            if fleet and size:
                est = Estimate(fleet[0] * size / gpus, "other models", fleet[1])
        f = out.setdefault(e.arch, ArchForecast(e.arch, host_gpus=len(planner.host.gpus_of(e.arch))))
        f.builds.append((est.seconds, gpus))
        f.bases[est.basis] = f.bases.get(est.basis, 0) + 1
        f.evidence += est.builds
    return out


BASIS = {"this engine": "its own last build", "its model": "builds of its model",
         "other models": "builds of other models scaled by size", "checkpoint size": "a default rate (no build yet)"}


def duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def gpu_time(seconds: float) -> str:
    return f"{seconds / 3600:.2f} GPU-hours" if seconds >= 360 else f"{seconds:.0f} GPU-seconds"


def describe(f: ArchForecast, gpus: int | None = None) -> str:
    """`sm90: 3 builds, 0.42 GPU-hours, about 13 min on this host's 2 sm90 GPUs (estimate: 2 from its own last
    build, 1 from builds of its model; 4 recorded builds)`. A CPU arch: its build time, one build at a time."""
    count = len(f.builds)
    refit = f"{f.refits} refit{'s' if f.refits != 1 else ''} (weights only, not forecast as builds)"
    if not count:
        return f"{f.arch}: no builds, {refit}"
    head = f"{f.arch}: {count} build{'s' if count != 1 else ''}{', ' + refit if f.refits else ''}, "
    if not GPU_ARCH_RE.fullmatch(f.arch):
        head += f"about {duration(sum(s for s, _ in f.builds))} of CPU build time"
    else:
        n = gpus or f.host_gpus
        where = f"on {n} GPUs" if gpus else f"on this host's {n} {f.arch} GPU{'s' if n != 1 else ''}"
        head += f"{gpu_time(sum(s * g for s, g in f.builds))}, " + (
            f"about {duration(f.wall_seconds(n))} {where}" if n else f"no {f.arch} GPU here (--gpus N for a wall time)")
    bases = ", ".join(f"{v} from {BASIS[k]}" for k, v in sorted(f.bases.items()))
    return f"{head} (estimate: {bases}; {f.evidence} recorded build{'s' if f.evidence != 1 else ''})"


def lines(planner: Planner, states: Sequence[EngineState], gpus: int | None = None) -> list[str]:
    """`forecast  <describe>` per arch with pending builds, or `forecast  nothing to build`."""
    per_arch = forecast(planner, states)
    if not per_arch:
        return ["forecast  nothing to build"]
    return [f"forecast  {describe(f, gpus)}" for _, f in sorted(per_arch.items())]
