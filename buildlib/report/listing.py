"""The plan as `doit plan` and `doit status` list it: the engines a run asks about (globs, a CI shard), one line per
engine with its reasons, the JSON rows CI reads, and the summary line. `doit plan` is a thin command over these."""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Sequence
from typing import Any

from ..core.errors import UserError
from ..plan.estimate import engine_expected_seconds
from ..plan.planner import Planner, shown
from ..plan.state import BLOCKED, FRESH, EngineState, state_json
from ..store.channel import served
from .ci import is_work, shard


def planned(planner: Planner, globs: Sequence[str] = (), which: tuple[int, int] | None = None,
            with_store: bool = True) -> list[EngineState]:
    """The states as shown (buildlib.plan.planner.shown) of the engines matching `globs` (all when none), and of
    those only shard `which` (i, n) of the work, split by expected build time."""
    states = shown(planner, planner.plan(with_store=with_store))
    if globs:
        states = select(states, globs)
    if which is not None:
        states = shard(states, *which, cost=lambda s: expected(planner, s))
    return states


def expected(planner: Planner, s: EngineState) -> float:
    return engine_expected_seconds(planner, s.engine)


def select(states: list[EngineState], globs: Sequence[str]) -> list[EngineState]:
    """The engines matching any glob; a glob that matches none is a typo to report (exit 2), not `0 engines`."""
    unmatched = [g for g in globs if not any(fnmatch.fnmatch(s.engine.id, g) for s in states)]
    if unmatched:
        some = ", ".join(s.engine.id for s in states[:3]) + (", ..." if len(states) > 3 else "")
        raise UserError(f"no engine matches {', '.join(repr(g) for g in unmatched)}; engines are "
                        f"<model>/<arch>/tp<N>-pp<M> ({some}): `doit plan` lists them")
    return [s for s in states if any(fnmatch.fnmatch(s.engine.id, g) for g in globs)]


def channels(planner: Planner) -> dict[str, list[str]]:
    """engine key -> the release channels serving it (buildlib.store.channel); {} without a store."""
    return served(planner.store) if planner.store is not None else {}


def json_text(planner: Planner, states: Sequence[EngineState]) -> str:
    """`doit plan --json`: one engine per line, through json's C encoder (an indent makes json.dumps take its
    pure-Python one: 0.1 s of a plan of 10,000 engines), and a line per engine for grep. `channels`: the release
    channels whose release in force serves the engine's current key."""
    serving = channels(planner)
    rows = [{**state_json(s), "expected_seconds": round(expected(planner, s), 3) if is_work(s) or
             s.state == BLOCKED else 0.0, "channels": serving.get(s.key or "", [])} for s in states]
    return "[\n" + ",\n".join(map(json.dumps, rows)) + "\n]\n" if rows else "[]\n"


def render(s: EngineState) -> str:
    reasons = list(s.reasons)
    if s.store and s.state != FRESH:
        reasons.append("the store has it: `doit` restores it instead of building")
    elif s.refit_store and s.state != FRESH:
        reasons.append("the store has an engine of its structure: refit")
    why = f"  ({'; '.join(reasons)})" if reasons else ""
    return f"{s.state:<8} {s.engine.id}{why}"


def summary(states: list[EngineState]) -> str:
    counts: dict[str, Any] = {}
    for s in states:
        counts[s.state] = counts.get(s.state, 0) + 1
    restorable = sum(1 for s in states if s.store and s.state != FRESH)
    return (f"{plural(len(states), 'engine')}: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
            + (f" ({restorable} restorable from the store)" if restorable else ""))


def plural(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")
