"""doit's console reporter, plus end-of-run lines: engines left out as up to date, engines not built here.

doit imports every installed REPORTER plugin on every run (even a plain dodo.py's), so this module
imports only buildlib.states: a plain doit run in the same environment does not pay for buildlib.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from doit.reporter import ConsoleReporter
from doit.task import Task

from .states import BLOCKED

if TYPE_CHECKING:
    from .tasks import LeftOut


class EngineReporter(ConsoleReporter):
    """doit's console output, plus end-of-run lines: engines left out as up to date, engines not built here."""

    desc = "console output, with engines up to date or not buildable here summed up at the end"
    left_out: LeftOut | None = None  # engines the loader gave no tasks (set by the loader before a run)

    def __init__(self, outstream: Any, options: dict[str, Any]):
        super().__init__(outstream, options)
        self.blocked: dict[str, list[str]] = {}  # why -> engines whose build task could not build them here

    def add_success(self, task: Task) -> None:
        if task.values.get("state") == BLOCKED and task.name.startswith("build:"):
            why = task.values.get("why") or "see `doit plan` for why"
            self.blocked.setdefault(why, []).append(task.name.removeprefix("build:"))
        super().add_success(task)

    def complete_run(self) -> None:
        """`N engine(s) up to date`, then per reason `N engine(s) not built here, <reason>: a, b, c and 7 more`
        (engines left out of the run, and build tasks that ran but could not build here)."""
        left = self.left_out
        if left and left.done:
            self.write(f"{len(left.done)} engine(s) up to date (`doit plan` lists every engine)\n")
        not_built = {why: list(ids) for why, ids in (left.blocked.items() if left else ())}
        for why, ids in self.blocked.items():
            not_built.setdefault(why, []).extend(ids)
        for reason, ids in not_built.items():
            some = ", ".join(ids[:3]) + (f" and {len(ids) - 3} more" if len(ids) > 3 else "")
            self.write(f"{len(ids)} engine(s) not built here, {reason}: {some}\n")
        super().complete_run()
