"""doit's console reporter, plus end-of-run lines: engines left out as up to date, engines that need another host.

doit imports every installed REPORTER plugin on every run (even a plain dodo.py's), so this module
imports nothing of buildlib's: a plain doit run in the same environment does not pay for it.
"""

from __future__ import annotations

from typing import Any

from doit.reporter import ConsoleReporter
from doit.task import Task

from .states import BLOCKED


class EngineReporter(ConsoleReporter):
    """doit's console output, plus an end-of-run line for engines this host could not build."""

    desc = "console output, with engines that need another host listed at the end"
    left_out = 0  # engines the loader gave no tasks because they had nothing to do (set before a run)

    def __init__(self, outstream: Any, options: dict[str, Any]):
        super().__init__(outstream, options)
        self.blocked: list[str] = []

    def add_success(self, task: Task) -> None:
        if task.values.get("state") == BLOCKED and task.name.startswith("build:"):
            self.blocked.append(task.name.removeprefix("build:"))
        super().add_success(task)

    def complete_run(self) -> None:
        if self.left_out:
            self.write(f"{self.left_out} engine(s) up to date (`doit plan` lists every engine)\n")
        if self.blocked:
            self.write(f"{len(self.blocked)} engine(s) need another host (see `doit plan`): "
                       f"{', '.join(self.blocked)}\n")
        super().complete_run()
