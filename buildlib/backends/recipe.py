"""The planning seam: what a backend tells the planner, cheaply, on every run (CPU-only CI runners too).

A Recipe never imports its toolchain: versions come from package metadata, options from tables. Everything here
that feeds the engine key (resolve, toolchain, build_fields, input_dirs) must stay cheap, since a no-op over a
fleet asks it for every model. The work itself (convert, build, refit, validate) is the Runner's
(buildlib.backends.runner), in subprocesses.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, ClassVar

from ..core.model import GeneratedCheckpoint, ModelSpec

GENERATED_ARCHITECTURE = {"tinyllama": "LlamaForCausalLM"}


def dist_version(*names: str) -> str | None:
    """The version of the first installed distribution of these names, from its metadata (no import:
    cheap, and works where the package cannot load, e.g. a CUDA build on a CPU-only planner)."""
    for name in names:
        try:
            return version(name)
        except PackageNotFoundError:
            continue
    return None


def model_architecture(model: ModelSpec, checkpoint: Path) -> str | None:
    """The architecture TensorRT-LLM builds: models.yaml `model_class`, else the checkpoint's
    config.json `architectures[0]` (what MODEL_MAP and PretrainedConfig.architecture use)."""
    if model.model_class is not None:
        return model.model_class
    if isinstance(model.checkpoint, GeneratedCheckpoint):
        return GENERATED_ARCHITECTURE.get(model.checkpoint.generator)
    try:
        archs = json.loads((checkpoint / "config.json").read_text()).get("architectures")
    except (OSError, ValueError, AttributeError):
        return None
    return archs[0] if isinstance(archs, list) and archs and isinstance(archs[0], str) else None


class Recipe(ABC):
    """How a backend's engines are planned: six questions, each cheap. A backend is a class, not an if-chain."""

    name: ClassVar[str]
    has_convert: ClassVar[bool] = False  # an intermediate checkpoint per tp/pp, shared by every arch

    @abstractmethod
    def resolve(self, model: ModelSpec) -> dict[str, Any]:
        """The model's build options with every default filled (model.build: what models.yaml set), made
        refittable where model.refit; refuse what this backend cannot build, before any GPU time is spent:
        SpecError whose field is the path within the model entry (`build.max_batch_size`, `archs`)."""

    @abstractmethod
    def schema(self) -> dict[str, Any]:
        """JSON Schema of each `build:` option, from the table resolve() checks against (buildlib.spec.schema)."""

    def target(self, arch: str, cpu_isa: str) -> str:
        """A models.yaml arch -> the concrete arch an engine is built for (cpu_isa: this host's, buildlib.host.isa)."""
        return arch

    @abstractmethod
    def toolchain(self) -> dict[str, str | None]:
        """Versions that shape the artifact (part of the key); BackendUnavailable where it cannot build here."""

    def build_fields(self, model: ModelSpec, architecture: Callable[[], str | None]) -> dict[str, Any]:
        """The build options every engine of the model is built with, as the key records them: model.build plus
        what depends on the checkpoint's model architecture, read by calling `architecture()` only where the
        options need it. A function of model.build and that architecture only, and whether it calls
        `architecture` depends on model.build alone: the planner asks once per distinct build (and architecture,
        where asked), since a fleet's models mostly share one."""
        return model.build_options

    def input_dirs(self, model: ModelSpec, root: Path) -> dict[str, Path]:
        """Directories besides the checkpoint whose contents shape the engine (their digests go into the key),
        by the models.yaml field that names them (relative paths: to `root`, models.yaml's dir)."""
        return {}
