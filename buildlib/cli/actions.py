"""doit actions: each runs one step (buildlib.run) for an engine, here or on the Ray cluster (buildlib.fleet);
a failure the user can act on becomes doit's TaskFailed (its message names the log), never a traceback.
Module-level functions: picklable, for `doit -n N -P process`."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from doit.exceptions import TaskFailed

from ..backends.registry import runner
from ..core.engine import Engine
from ..core.errors import BuildFailed, UserError
from ..core.model import ModelSpec, Project
from ..fleet import ray_exec
from ..host.interrupt import no_space
from ..plan.state import BLOCKED, FRESH
from ..run import build, triton, validate
from ..run.produce import generate_checkpoint, say
from .session import planner_of


def _failed_is_task_failure(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A BuildFailed (or a full disk) becomes doit's TaskFailed: its message (naming the log), exit status 1,
    no traceback."""
    @functools.wraps(fn)
    def action(*args: Any) -> Any:
        try:
            return fn(*args)
        except (BuildFailed, UserError) as e:
            return TaskFailed(str(e))
        except OSError as e:
            full = no_space(e)
            if full is None:
                raise
            return TaskFailed(full)
    return action


@_failed_is_task_failure
def generate_action(project: Project, model: ModelSpec) -> None:
    generate_checkpoint(planner_of(project, model), model)


@_failed_is_task_failure
def convert_action(project: Project, engine: Engine) -> None:
    build.convert(planner_of(project, engine.model), engine)


def _on_ray(project: Project, engine: Engine, step: str) -> dict[str, Any] | None:
    """With BUILDLIB_RAY set, run the step on the cluster first (buildlib.fleet.ray_exec); None when off or not needed.
    The local step that follows then finds the engine fresh (shared engines dir) or restores it (store)."""
    addr = ray_exec.address()
    if addr is None:
        return None
    planner = planner_of(project, engine.model)
    st = planner.state(engine)
    if step == "build" and (st.state == FRESH or not st.key):
        return None
    if step == "validate" and (st.state != FRESH or validate.validated(planner, engine)):
        return None
    gpus = runner(engine.model.backend).gpus(engine, step)
    assert st.key is not None
    out = ray_exec.RayExecutor.get(addr).run(str(project.models_path), engine, step, st.key, gpus,
                                             at_least=min(gpus, 1) if step == "build" else None)
    if out.get("validation"):  # kept here too, where the engines dir is not the workers'
        validate.record_validation(planner, engine, out["validation"])
    if not out["ok"]:
        raise BuildFailed(out.get("error") or f"{step}:{engine.id} failed on the Ray cluster")
    return out


@_failed_is_task_failure
def build_action(project: Project, engine: Engine, expected: float) -> dict[str, Any]:
    remote = _on_ray(project, engine, "build")
    if remote is not None and remote["state"] == BLOCKED:
        say(f"{engine.id}: {remote['why']}; not built")
        return {"state": BLOCKED, "why": remote["why"], "how": "blocked"}
    done = build.build(planner_of(project, engine.model), engine, priority=expected)
    # after a Ray build the engine is here already (shared dir) or restored from the store: the worker built it
    return {"state": done.state, "why": done.why, "how": remote["how"] if remote is not None else done.how}


@_failed_is_task_failure
def triton_action(project: Project, engine: Engine) -> dict[str, Any]:
    planner = planner_of(project, engine.model)
    st = planner.state(engine)
    if st.state == BLOCKED:
        say(f"{engine.id}: {st.reasons[0]}; no Triton repository here")
        return {"state": BLOCKED, "why": st.reasons[0]}
    repo = triton.make_repository(planner, engine)
    checked = "" if triton.schema_checker() is not None else \
        " (config.pbtxt not checked against Triton's schema: pip install 'enginebuild[triton]')"
    say(f"triton repository for {engine.id} -> {repo}{checked}")
    return {"state": FRESH}


@_failed_is_task_failure
def validate_action(project: Project, engine: Engine, expected: float) -> dict[str, Any]:
    remote = _on_ray(project, engine, "validate")
    if remote is not None:
        if remote["state"] == BLOCKED:
            say(f"{engine.id}: {remote.get('why') or 'the worker cannot run it'}; not validated")
        return {"state": remote["state"]}  # the reporter's tally counts a fresh one as validated
    result = validate.validate(planner_of(project, engine.model), engine, priority=expected)
    return {"state": BLOCKED if result is None else FRESH}
