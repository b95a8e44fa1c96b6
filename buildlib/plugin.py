"""doit integration: the task loader, the reporter, and doit config (entry points in pyproject)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from doit.cmd_base import TaskLoader2
from doit.reporter import ConsoleReporter
from doit.task import Task, dict_to_task

from .errors import EXIT_USAGE, UserError
from .plan import BLOCKED
from .tasks import planner_for, task_dicts

T = TypeVar("T")


def exit_on_user_error(fn: Callable[[], T]) -> T:
    """Run fn; a UserError becomes one line on stderr and exit status 2 (no traceback)."""
    try:
        return fn()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None


def doit_config(models: str | Path) -> dict[str, Any]:
    """DOIT_CONFIG for a models.yaml. Parsing (and validating) it here, before doit opens its
    database, means bad input writes nothing."""
    planner = exit_on_user_error(lambda: planner_for(models))
    exit_on_user_error(lambda: planner.store)  # a misconfigured store is bad input too
    return {
        "default_tasks": ["engines"],
        "verbosity": 2,
        "backend": "sqlite3",  # the only doit backend that survives concurrent runs
        "reporter": "buildlib",
        "models": str(models),
    }


def dodo_tasks(models: str | Path) -> list[dict[str, Any]]:
    """Task dicts for a dodo.py (`basename` keys make each one a top-level task)."""
    return exit_on_user_error(lambda: list(task_dicts(planner_for(models))))


class EngineLoader(TaskLoader2):
    """`[tool.doit] loader = "buildlib"`: tasks straight from models.yaml, no dodo.py needed."""

    cmd_options = ({"name": "models", "long": "models", "type": str, "default": "models.yaml",
                    "env_var": "BUILDLIB_MODELS", "help": "the models.yaml to build [default: %(default)s]"},)

    def setup(self, opt_values: dict[str, Any]) -> None:
        self.models = opt_values["models"]

    def load_doit_config(self) -> dict[str, Any]:
        return doit_config(self.models)

    def load_tasks(self, cmd: Any, pos_args: list[str]) -> list[Task]:
        return [dict_to_task({"name": d.pop("basename"), **d}) for d in dodo_tasks(self.models)]


class EngineReporter(ConsoleReporter):
    """doit's console output, plus an end-of-run line for engines this host could not build."""

    desc = "console output, with engines that need another host listed at the end"

    def __init__(self, outstream: Any, options: dict[str, Any]):
        super().__init__(outstream, options)
        self.blocked: list[str] = []

    def add_success(self, task: Task) -> None:
        if task.values.get("state") == BLOCKED and task.name.startswith("build:"):
            self.blocked.append(task.name.removeprefix("build:"))
        super().add_success(task)

    def complete_run(self) -> None:
        if self.blocked:
            self.write(f"{len(self.blocked)} engine(s) need another host (see `doit plan`): "
                       f"{', '.join(self.blocked)}\n")
        super().complete_run()
