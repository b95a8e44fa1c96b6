"""One engine to build: a model at an arch and a tp/pp config, and where its files live."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .model import ModelSpec, Project


@dataclass(frozen=True)
class Engine:
    """`<model>/<arch>/tp<N>-pp<M>`; arch is concrete (a `cpu` entry is expanded to the host ISA)."""

    model: ModelSpec
    arch: str
    tp: int
    pp: int

    @property
    def world_size(self) -> int:
        return self.tp * self.pp

    @property
    def parallel(self) -> str:
        return f"tp{self.tp}-pp{self.pp}"

    @property
    def id(self) -> str:
        return f"{self.model.name}/{self.arch}/{self.parallel}"

    @property
    def convert_id(self) -> str:
        return f"{self.model.name}/{self.parallel}"

    def dir(self, project: Project) -> Path:
        return Path(self.path(project))

    def path(self, project: Project) -> str:
        """dir() as a str, for hot paths (a no-op over a fleet builds no Path objects). Kept with the project it is
        for, so the stamp check, the plan and the task loader of one run join it once (written to __dict__ directly,
        as functools.cached_property does: the dataclass is frozen)."""
        got = self.__dict__.get("_path")
        if got is None or got[0] is not project:  # the id is the layout: <model>/<arch>/tp<N>-pp<M>
            root = os.fspath(project.engines_dir)  # os.path.join's result (an id never starts with "/"), 1/3 the cost
            got = self.__dict__["_path"] = (project, f"{root}/{self.id}" if root[-1:] != "/" else root + self.id)
        return got[1]
