"""doit's console reporter, plus the end of every run: engines not built here with the reason, and one tally line.

doit imports every installed REPORTER plugin on every run (even a plain dodo.py's), so this module
imports only buildlib.states: a plain doit run in the same environment does not pay for buildlib.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

from doit.exceptions import BaseFail
from doit.reporter import ConsoleReporter
from doit.task import Task

from .states import BLOCKED

if TYPE_CHECKING:
    from .tasks import LeftOut

# The tally's words, in its order: `3 built, 1 restored, 2 validated, 1 failed, 500 up to date, 500 not for this host`
TALLY = ("built", "restored", "validated", "failed", "up to date", "not for this host")
STEPS = ("checkpoint:", "convert:", "build:", "validate:")


class EngineReporter(ConsoleReporter):
    """doit's console output; at the end, per reason the engines not built here, then the tally line."""

    desc = "console output, ending with the engines not built here and a tally of what the run did"
    left_out: LeftOut | None = None  # engines the loader gave no tasks (set by the loader before a run)

    def __init__(self, outstream: Any, options: dict[str, Any]):
        super().__init__(outstream, options)
        self.blocked: dict[str, list[str]] = {}  # why -> engines whose build task could not build them here
        self.tally: Counter[str] = Counter()

    def add_success(self, task: Task) -> None:
        how = task.values.get("how")
        if task.name.startswith("build:"):
            if task.values.get("state") == BLOCKED:
                why = task.values.get("why") or "see `doit plan` for why"
                self.blocked.setdefault(why, []).append(task.name.removeprefix("build:"))
            elif how in ("built", "restored", "up to date"):
                self.tally[how] += 1
        elif task.name.startswith("validate:") and task.values.get("state") not in (None, BLOCKED):
            self.tally["validated"] += 1
        super().add_success(task)

    def skip_uptodate(self, task: Task) -> None:
        if task.name.startswith("build:"):
            self.tally["up to date"] += 1
        super().skip_uptodate(task)

    def add_failure(self, task: Task, fail: BaseFail) -> None:
        if task.name.startswith(STEPS):
            self.tally["failed"] += 1
        super().add_failure(task, fail)

    def complete_run(self) -> None:
        """Per reason `N engines not built here, <reason>: a, b, c and 7 more`, then the tally line
        (`nothing to do: ...` when the run did nothing but find engines up to date or not for this host)."""
        left = self.left_out
        not_built = {why: list(ids) for why, ids in (left.blocked.items() if left else ())}
        for why, ids in self.blocked.items():
            not_built.setdefault(why, []).extend(ids)
        for reason, ids in not_built.items():
            some = ", ".join(ids[:3]) + (f" and {len(ids) - 3} more" if len(ids) > 3 else "")
            self.write(f"{engines(len(ids))} not built here, {reason}: {some}\n")
        tally = Counter(self.tally)
        tally["up to date"] += len(left.done) if left else 0
        tally["not for this host"] += sum(len(ids) for ids in not_built.values())
        words = ", ".join(f"{tally[k]} {k}" for k in TALLY if tally[k])
        idle = not any(tally[k] for k in TALLY[:4])
        self.write(("nothing to do: " + (words or "no engines") if idle else words) + "\n")
        super().complete_run()


def engines(n: int) -> str:
    return f"{n} engine" + ("" if n == 1 else "s")
