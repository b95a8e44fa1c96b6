"""The running seam: what a backend does to make and check an engine, and what a step of it needs from a host.

Every toolchain call runs in a subprocess (buildlib.host.proc), so a Runner imports no toolchain either. A step
writes into a temp dir (Job.out_dir) that the caller publishes atomically (buildlib.run); build and refit
leave a complete engine there or raise BuildFailed (`require_files`), so nothing incomplete is ever published.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from ..core.engine import Engine
from ..core.errors import BuildFailed
from ..core.model import GPU_ARCH_RE
from ..host.gpu import Gpu, Host

Step = Literal["convert", "build", "refit", "validate"]


@dataclass(frozen=True)
class Job:
    """Everything one step needs; made by buildlib.run, handed to a Runner."""

    engine: Engine
    checkpoint: Path  # the Hugging Face checkpoint dir
    converted: Path | None  # the backend's intermediate checkpoint, if it has a convert stage
    out_dir: Path  # where to write (a temp dir, published atomically by the caller)
    gpus: tuple[Gpu, ...]
    log: Path
    work_dir: Path
    root: Path  # models.yaml's dir: relative paths in models.yaml (e.g. lora_dir) are relative to it

    def visible_env(self) -> dict[str, str]:
        """CUDA_VISIBLE_DEVICES for the GPUs this step was given (and only those)."""
        # nvidia-smi numbers GPUs in PCI bus order; CUDA's default order is fastest-first.
        return {"CUDA_DEVICE_ORDER": "PCI_BUS_ID",
                "CUDA_VISIBLE_DEVICES": ",".join(str(g.index) for g in self.gpus)}


def require_files(what: str, out_dir: Path, names: Iterable[str]) -> None:
    """An engine is complete only when every file it must have exists: BuildFailed naming the missing ones."""
    missing = [n for n in names if not (out_dir / n).is_file()]
    if missing:
        raise BuildFailed(f"{what} produced an incomplete engine: missing {', '.join(missing)}")


class Runner(ABC):
    """How a backend's steps run: the GPUs a step wants, why a host cannot run it, and the four steps."""

    name: ClassVar[str]

    def gpus(self, engine: Engine, step: Step) -> int:
        """GPUs the step wants at once (the scheduler may give a build fewer: one GPU builds every rank)."""
        return 1 if GPU_ARCH_RE.fullmatch(engine.arch) and step != "convert" else 0

    def blocked(self, engine: Engine, host: Host, step: Step = "build") -> str | None:
        """Why this host cannot run the step for the engine (`needs an sm80 host`), or None if it can. For a
        build, a function of the engine's arch and model (not its tp/pp) and the host: the planner asks once per
        model and arch."""
        if GPU_ARCH_RE.fullmatch(engine.arch) and not host.gpus_of(engine.arch, engine.model.gpu_name):
            gpu = f" with a {engine.model.gpu_name}" if engine.model.gpu_name else ""
            return f"needs an {engine.arch} host{gpu}"
        return None

    def convert(self, job: Job) -> None:
        """Write the intermediate checkpoint into job.out_dir (backends whose Recipe has_convert)."""
        raise NotImplementedError(f"{self.name} has no convert stage")

    @abstractmethod
    def build(self, job: Job) -> None:
        """Write the complete engine into job.out_dir; BuildFailed on failure or when a file is missing."""

    def refit(self, job: Job, source: Path) -> None:
        """Write into job.out_dir, complete, the refittable engine in `source` with the weights of job's checkpoint
        (the engine's structure is the same, buildlib.core.structure); BuildFailed when the toolchain refuses."""
        raise BuildFailed(f"the {self.name} backend cannot refit engines")

    def build_cache(self, engine: Engine, gpus: tuple[Gpu, ...], work_dir: Path) -> tuple[str, Path] | None:
        """The build cache a build of `engine` on `gpus` reads and writes: (its name in the store, a file or dir
        under work_dir), named by what makes it reusable (GPU name or CPU ISA, toolchain version); None if the
        backend keeps none. Never part of a key (buildlib.run.caches)."""
        return None

    @abstractmethod
    def validate(self, job: Job) -> dict[str, Any]:
        """Load the engine in job.out_dir and run it; return details, raise BuildFailed if wrong."""
