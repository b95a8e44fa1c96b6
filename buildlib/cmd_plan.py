"""`doit plan`: each engine's state (fresh/stale/missing/blocked) and the per-field reasons."""

from __future__ import annotations

import fnmatch
import json
import os
from pathlib import Path
from typing import Any

from .ci import is_work, markdown_summary, parse_shard, shard, task_name
from .command import EngineCommand
from .errors import UserError
from .forecast import lines as forecast_lines
from .plan import BLOCKED, FRESH, EngineState, Planner, shown, state_json
from .plugin import exit_on_user_error
from .sched import engine_expected_seconds
from .tasks import loaded_planner

opt_json = {"name": "as_json", "long": "json", "type": bool, "default": False,
            "help": "print a JSON list of {engine, state, reasons, key, store, gpus, expected_seconds, ...}"}
opt_check = {"name": "check", "long": "check", "type": bool, "default": False,
             "help": "exit 1 when an engine this host can build is not fresh"}
opt_shard = {"name": "shard", "long": "shard", "type": str, "default": "",
             "help": "i/n: only the i-th of n shards of the buildable (stale/missing) engines, split evenly by "
                     "expected build time; the same on every host with the same checkout"}
opt_markdown = {"name": "markdown", "long": "markdown", "type": str, "default": "",
                "help": "also write a Markdown summary to this file (e.g. $GITHUB_STEP_SUMMARY)"}
opt_gpus = {"name": "gpus", "long": "gpus", "type": int, "default": 0,
            "help": "forecast the wall time on this many GPUs per arch [default: this host's GPUs of each arch]"}
opt_targets = {"name": "targets", "long": "targets", "type": bool, "default": False,
               "help": "print only the doit tasks that finish the selected buildable engines, one per line "
                       "(validate:<engine>, or build:<engine> without validation): doit $(doit plan --targets)"}


def expected(planner: Planner, s: EngineState) -> float:
    return engine_expected_seconds(planner, s.engine)


def write_text(path: str, text: str, append: bool = False) -> None:
    """Write a report file; a path that cannot be written is the user's to fix (exit 2)."""
    try:
        with open(Path(path), "a" if append else "w") as f:
            f.write(text)
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror}; check the directory exists and is writable") from None


class PlanCmd(EngineCommand):
    """Decided up front, like ninja's plan: nothing is built, nothing is written (but --markdown's file)."""

    name = "plan"
    needs_tasks = False  # reads the plan, not doit tasks: the loader skips building them
    doc_purpose = "show which engines are fresh, stale, missing or blocked, and why"
    doc_usage = "[--json] [--check] [--shard i/n] [--targets] [--markdown FILE] [ENGINE-GLOB ...]"
    doc_description = ("States come from each engine dir's manifest.json, never from .doit.db:\n"
                       "  fresh    built from exactly these inputs, outputs intact\n"
                       "  stale    built from other inputs (reasons per field)\n"
                       "  missing  not built yet\n"
                       "  blocked  needs building, but this host cannot (e.g. needs an sm80 host)\n"
                       "  unvalidated  built, but its validation failed or has not run (the failure and its log)\n"
                       "CI: `doit $(doit plan --shard 2/4 --targets '*/sm90/*')` builds the 2nd of 4 shards\n"
                       "of the sm90 engines that are stale or missing; every such engine is in exactly one shard.")
    cmd_options = (opt_json, opt_check, opt_shard, opt_targets, opt_markdown, opt_gpus)

    def _execute(self, as_json: bool, check: bool, shard: str, targets: bool, markdown: str, gpus: int,
                 pos_args: list[str] | None = None) -> int:
        return exit_on_user_error(lambda: self._run(as_json, check, shard, targets, markdown, gpus, pos_args or []))

    def _run(self, as_json: bool, check: bool, shard_spec: str, targets: bool, markdown: str, gpus: int,
             globs: list[str]) -> int:
        which = parse_shard(shard_spec) if shard_spec else None
        if as_json and targets:
            raise UserError("--json and --targets are exclusive: --targets prints task names, --json the plan")
        planner = loaded_planner()
        states = shown(planner, planner.plan(with_store=not targets))  # task names need no store round trips
        if globs:
            states = select(states, globs)
        if which is not None:
            states = shard(states, *which, cost=lambda s: expected(planner, s))
        if markdown:
            title = f"Engines, shard {which[0]}/{which[1]}" if which else "Engines"
            write_text(markdown, markdown_summary(states, title=title), append=markdown_is_summary(markdown))
        if targets:
            for s in states:
                if is_work(s):
                    self.outstream.write(task_name(s) + "\n")
        elif as_json:
            rows = [{**state_json(s), "expected_seconds": round(expected(planner, s), 3) if is_work(s) or
                     s.state == BLOCKED else 0.0} for s in states]
            # One engine per line: json's C encoder (an indent makes json.dumps take its pure-Python one: 0.1 s
            # of a plan of 10,000 engines), and a line per engine for grep.
            self.outstream.write("[\n" + ",\n".join(map(json.dumps, rows)) + "\n]\n" if rows else "[]\n")
        else:
            for s in states:
                self.outstream.write(render(s) + "\n")
            for line in forecast_lines(planner, states, gpus_option(gpus)):
                self.outstream.write(line + "\n")
            self.outstream.write(summary(states) + "\n")
        if check and any(s.state not in (FRESH, BLOCKED) for s in states):
            return 1
        return 0


def gpus_option(gpus: int) -> int | None:
    if gpus < 0:
        raise UserError(f"--gpus {gpus}: give a number of GPUs (>= 1), or leave it out for this host's")
    return gpus or None


def markdown_is_summary(path: str) -> bool:
    """GitHub's job summary file collects every step's output: append to it rather than replace."""
    return bool(os.environ.get("GITHUB_STEP_SUMMARY")) and Path(path) == Path(os.environ["GITHUB_STEP_SUMMARY"])


def select(states: list[EngineState], globs: list[str]) -> list[EngineState]:
    """The engines matching any glob; a glob that matches none is a typo to report (exit 2), not `0 engines`."""
    unmatched = [g for g in globs if not any(fnmatch.fnmatch(s.engine.id, g) for s in states)]
    if unmatched:
        some = ", ".join(s.engine.id for s in states[:3]) + (", ..." if len(states) > 3 else "")
        raise UserError(f"no engine matches {', '.join(repr(g) for g in unmatched)}; engines are "
                        f"<model>/<arch>/tp<N>-pp<M> ({some}): `doit plan` lists them")
    return [s for s in states if any(fnmatch.fnmatch(s.engine.id, g) for g in globs)]


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
