"""`doit plan`: each engine's state (fresh/stale/missing/blocked) and the per-field reasons."""

from __future__ import annotations

import fnmatch
import json
from typing import Any

from doit.cmd_base import DoitCmdBase

from .plan import BLOCKED, FRESH, EngineState, state_json
from .plugin import exit_on_user_error
from .tasks import loaded_planner

opt_json = {"name": "as_json", "long": "json", "type": bool, "default": False,
            "help": "print a JSON list of {engine, state, reasons, key, ...}"}
opt_check = {"name": "check", "long": "check", "type": bool, "default": False,
             "help": "exit 1 when an engine this host can build is not fresh"}


class PlanCmd(DoitCmdBase):
    """Decided up front, like ninja's plan: nothing is built, nothing is written."""

    name = "plan"
    doc_purpose = "show which engines are fresh, stale, missing or blocked, and why"
    doc_usage = "[--json] [--check] [ENGINE-GLOB ...]"
    doc_description = ("States come from each engine dir's manifest.json, never from .doit.db:\n"
                       "  fresh    built from exactly these inputs, outputs intact\n"
                       "  stale    built from other inputs (reasons per field)\n"
                       "  missing  not built yet\n"
                       "  blocked  needs building, but this host cannot (e.g. needs an sm80 host)")
    cmd_options = (opt_json, opt_check)

    def _execute(self, as_json: bool, check: bool, pos_args: list[str] | None = None) -> int:
        planner = loaded_planner()
        states = exit_on_user_error(planner.plan)
        if pos_args:
            states = [s for s in states if any(fnmatch.fnmatch(s.engine.id, g) for g in pos_args)]
        if as_json:
            self.outstream.write(json.dumps([state_json(s) for s in states], indent=1) + "\n")
        else:
            for s in states:
                self.outstream.write(render(s) + "\n")
            self.outstream.write(summary(states) + "\n")
        if check and any(s.state not in (FRESH, BLOCKED) for s in states):
            return 1
        return 0


def render(s: EngineState) -> str:
    why = f"  ({'; '.join(s.reasons)})" if s.reasons else ""
    return f"{s.state:<8} {s.engine.id}{why}"


def summary(states: list[EngineState]) -> str:
    counts: dict[str, Any] = {}
    for s in states:
        counts[s.state] = counts.get(s.state, 0) + 1
    return f"{len(states)} engines: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
