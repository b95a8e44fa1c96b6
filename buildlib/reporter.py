"""doit's console reporter, plus end-of-run lines: engines left out as up to date, engines that need another host.

doit imports every installed REPORTER plugin on every run (even a plain dodo.py's), so this module
imports nothing of buildlib's: a plain doit run in the same environment does not pay for it.
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
        self.blocked: list[str] = []

    def add_success(self, task: Task) -> None:
        if task.values.get("state") == BLOCKED and task.name.startswith("build:"):
            self.blocked.append(task.name.removeprefix("build:"))
        super().add_success(task)

    def complete_run(self) -> None:
        if self.left_out and self.left_out.done:
            self.write(f"{len(self.left_out.done)} engine(s) up to date (`doit plan` lists every engine)\n")
        for reason, ids in (self.left_out.blocked.items() if self.left_out else ()):
            some = ", ".join(ids[:3]) + (f" and {len(ids) - 3} more" if len(ids) > 3 else "")
            self.write(f"{len(ids)} engine(s) not built here, {reason}: {some}\n")
        if self.blocked:
            self.write(f"{len(self.blocked)} engine(s) need another host (see `doit plan`): "
                       f"{', '.join(self.blocked)}\n")
        super().complete_run()
