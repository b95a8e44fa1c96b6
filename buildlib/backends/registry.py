"""Backend registry: models.yaml `backend:` name -> its Recipe (planning) and Runner (steps)."""

from __future__ import annotations

from functools import cache

from .recipe import Recipe
from .runner import Runner


@cache
def recipes() -> dict[str, Recipe]:
    """Every backend's Recipe, by its models.yaml name."""
    from .aoti_recipe import AotiRecipe
    from .trtllm_recipe import TrtllmRecipe

    return {r.name: r for r in (TrtllmRecipe(), AotiRecipe())}


def recipe(name: str) -> Recipe:
    got = recipes().get(name)
    if got is None:
        raise KeyError(f"unknown backend {name!r}; choose one of {', '.join(sorted(recipes()))}")
    return got


@cache
def runners() -> dict[str, Runner]:
    """Every backend's Runner, by name (imported on first use: a plan whose engines are all fresh needs none)."""
    from .aoti_runner import AotiRunner
    from .trtllm_runner import TrtllmRunner

    return {r.name: r for r in (TrtllmRunner(), AotiRunner())}


def runner(name: str) -> Runner:
    got = runners().get(name)
    if got is None:
        raise KeyError(f"unknown backend {name!r}; choose one of {', '.join(sorted(runners()))}")
    return got
