"""The planners of this process: one per models.yaml, so the spec is parsed and checkpoints hashed once, shared
by the loader, the up-to-date checks, the actions and the commands."""

from __future__ import annotations

from pathlib import Path

from ..core.model import ModelSpec, Project, Spec
from ..plan.planner import Planner
from ..spec.load import load_spec

_PLANNERS: dict[Path, Planner] = {}


def planner_for(models_path: Path | str) -> Planner:
    """One Planner per models.yaml per process: the spec is parsed and checkpoints hashed once."""
    path = Path(models_path).absolute()
    if path not in _PLANNERS:
        _PLANNERS[path] = Planner(load_spec(path))
    return _PLANNERS[path]


def loaded_planner() -> Planner:
    """The planner the doit loader created in this process (for commands such as `doit plan`)."""
    if len(_PLANNERS) != 1:
        raise RuntimeError(f"expected one loaded models.yaml, found {len(_PLANNERS)}")
    return next(iter(_PLANNERS.values()))


def planner_of(project: Project, model: ModelSpec) -> Planner:
    """The process's planner for this project (a doit worker builds its own from what it was sent)."""
    p = _PLANNERS.get(project.models_path)
    if p is None:
        p = _PLANNERS[project.models_path] = Planner(Spec(project, (model,)))
    return p
