"""The fleet as a matrix: one row per model × parallel config, one column per arch, each cell an engine's state.

The states are the plan's (buildlib.plan.planner.shown), with one more a user acts on differently: `restorable`, an
engine that is stale or missing here but whose key the store holds (`doit` downloads it instead of building).
Cells name the release channels serving the engine first (`[prod] fresh`).
Each cell carries what the HTML report shows on demand: key fields, build time, size, toolchain, GPUs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..core.manifest import read_manifest
from ..core.perf import device_name, headline
from ..plan.planner import Planner
from ..plan.state import FRESH, EngineState
from .listing import channels

RESTORABLE = "restorable"


@dataclass
class Cell:
    engine: str
    state: str  # fresh, stale, missing, blocked, unvalidated, restorable
    reasons: list[str]
    details: dict[str, Any] = field(default_factory=dict)
    channels: list[str] = field(default_factory=list)  # release channels serving this engine's current key

    @property
    def short(self) -> str:
        """The state and its main reason, as a matrix cell says it: `stale: build.max_batch_size 8 -> 64`, `fresh:
        validated on NVIDIA H100 80GB HBM3 by main-ci, 2026-12-06` (a record a trusted signer published); the
        channels serving it first: `[prod, canary] fresh`."""
        served = f"[{', '.join(self.channels)}] " if self.channels else ""
        return served + self.state + (f": {self.reasons[0]}" if self.reasons else "")


@dataclass
class Matrix:
    archs: list[str]
    rows: list[tuple[str, str]]  # (model, tp<N>-pp<M>)
    cells: dict[tuple[str, str, str], Cell]  # (model, parallel, arch) -> cell

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for c in self.cells.values():
            out[c.state] = out.get(c.state, 0) + 1
        return dict(sorted(out.items()))


def details(planner: Planner, s: EngineState) -> dict[str, Any]:
    """What the engine dir's manifest says of its build (if any), and the key it should have."""
    out: dict[str, Any] = {"key": s.key, "backend": s.engine.model.backend}
    m = read_manifest(s.engine.dir(planner.spec.project))
    if m is not None:
        out.update(built_key=m.key, seconds=m.built.get("seconds"), gpus=m.built.get("gpus") or [],
                   at=m.built.get("at"), bytes=sum(v[0] for v in m.outputs.values()),
                   toolchain={k: v for k, v in (m.fields.get("toolchain") or {}).items() if v},
                   build=m.fields.get("build"), target=m.fields.get("target"))
    return out


def speed(perf: dict[str, Any] | None) -> dict[str, Any]:
    """What a cell shows of the speed its validation measured: tokens/s (prefill), the speed-up over eager."""
    if not perf:
        return {}
    pre = perf.get("prefill") or {}
    return {"tokens_per_s": headline(perf), "speedup": pre.get("speedup"), "measured_on": device_name(perf)}


def trade_off(m: Matrix) -> list[str]:
    """One line per engine with a recorded build or a measured speed: build seconds next to tokens/s and the
    speed-up over eager, the trade ahead-of-time compilation makes."""
    rows = [(c.engine, c.details.get("seconds"), c.details.get("tokens_per_s"), c.details.get("speedup"))
            for c in m.cells.values() if c.details.get("seconds") or c.details.get("tokens_per_s")]
    if not rows:
        return []
    width = max(len(r[0]) for r in rows)
    out = [f"{'engine':<{width}}  {'build s':>9}  {'tokens/s':>12}  {'x eager':>7}"]
    for name, secs, tps, up in rows:
        out.append(f"{name:<{width}}  {f'{secs:,.1f}' if secs else '-':>9}  {f'{tps:,.0f}' if tps else '-':>12}  "
                   f"{f'{up:.2f}' if up else '-':>7}")
    return out


def matrix(planner: Planner, states: list[EngineState]) -> Matrix:
    archs: list[str] = []
    rows: list[tuple[str, str]] = []
    cells: dict[tuple[str, str, str], Cell] = {}
    serving = channels(planner)
    for s in states:
        e = s.engine
        par = f"tp{e.tp}-pp{e.pp}"
        if e.arch not in archs:
            archs.append(e.arch)
        if (e.model.name, par) not in rows:
            rows.append((e.model.name, par))
        state = RESTORABLE if s.store and s.state != FRESH else s.state
        chs = serving.get(s.key or "", [])
        info = {**details(planner, s), "channels": chs, **speed(s.perf)}
        cells[(e.model.name, par, e.arch)] = Cell(e.id, state, list(s.reasons), info, chs)
    return Matrix(archs, rows, cells)


def text(m: Matrix, width: int = 44) -> list[str]:
    """The matrix as fixed-width text lines (cells cut at `width` characters, `-` where no engine is listed)."""
    def cut(t: str) -> str:
        return t if len(t) <= width else t[: width - 3] + "..."

    head = ["engine", *m.archs]
    body = [[f"{model} {par}", *(cut(m.cells[(model, par, a)].short) if (model, par, a) in m.cells else "-"
                                 for a in m.archs)] for model, par in m.rows]
    widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [head, *body]]
