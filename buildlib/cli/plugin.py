"""doit integration: the task loader and doit config (entry points in pyproject; the reporter is in reporter.py)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from doit.cmd_base import TaskLoader2
from doit.task import Task, dict_to_task

from ..core import gcpause
from ..host import interrupt
from .command import exit_on_user_error
from .reporter import EngineReporter
from .session import planner_for
from .tasks import LeftOut, group_names, task_dicts


def doit_config(models: str | Path) -> dict[str, Any]:
    """DOIT_CONFIG for a models.yaml. Parsing (and validating) it here, before doit opens its
    database, means bad input writes nothing."""
    interrupt.install()  # Ctrl-C / SIGTERM unwind the run and end it in one line (no traceback, no orphans)
    planner = exit_on_user_error(lambda: planner_for(models))
    store = exit_on_user_error(lambda: planner.store)  # a misconfigured store is bad input too
    if store is not None and not store.writable:
        print("store is read-only for this run: built engines are not pushed", file=sys.stderr, flush=True)
    planner.expect_host()  # so nvidia-smi, where needed, runs while doit sets up
    return {
        "default_tasks": ["engines"],
        "verbosity": 2,
        "backend": "sqlite3",  # the only doit backend that survives concurrent runs
        "reporter": "buildlib",
        "models": str(models),
    }


def dodo_tasks(models: str | Path, left_out: LeftOut | None = None) -> list[dict[str, Any]]:
    """Task dicts for a dodo.py (`basename` keys make each one a top-level task); see task_dicts
    for `left_out`. The reporter learns where running steps record their progress."""
    planner = exit_on_user_error(lambda: planner_for(models))
    EngineReporter.work_dir = planner.spec.project.work_dir
    return exit_on_user_error(lambda: list(task_dicts(planner, left_out)))


class EngineLoader(TaskLoader2):
    """`[tool.doit] loader = "buildlib"`: tasks straight from models.yaml, no dodo.py needed."""

    cmd_options = ({"name": "models", "long": "models", "type": str, "default": "models.yaml",
                    "env_var": "BUILDLIB_MODELS", "help": "the models.yaml to build [default: %(default)s]"},)

    def setup(self, opt_values: dict[str, Any]) -> None:
        self.models = opt_values["models"]

    def load_doit_config(self) -> dict[str, Any]:
        gcpause.pause()  # until load_tasks has made the tasks: planning a fleet is a bulk of allocations
        return doit_config(self.models)

    def load_tasks(self, cmd: Any, pos_args: list[str]) -> list[Task]:
        """All tasks, except for a `doit` run of groups only (the default run, `doit sm90`, `doit
        <model>`...): there engines with nothing to do get no tasks, and the reporter prints
        how many were left out. Any other command (`list`, `info`, `clean`, `forget`...) or
        a run naming a task sees every task. Commands that read the plan rather than tasks (`plan`,
        `report`, `gc`: `needs_tasks = False`) get none."""
        try:
            return self._tasks(cmd, pos_args)
        finally:
            gcpause.resume_frozen()

    def _tasks(self, cmd: Any, pos_args: list[str]) -> list[Task]:
        if not getattr(cmd, "needs_tasks", True):
            return []
        left_out: LeftOut | None = None
        if cmd.name == "run":
            groups = exit_on_user_error(lambda: group_names(planner_for(self.models)))
            left_out = LeftOut(wanted=frozenset(pos_args or ["engines"])) if set(pos_args) <= set(groups) else None
        tasks = [dict_to_task({"name": d.pop("basename"), **d}) for d in dodo_tasks(self.models, left_out)]
        EngineReporter.left_out = left_out
        return tasks
