"""The backend seam: what a backend (trtllm, aoti) must provide to be planned, built and validated."""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, ClassVar

from ..engine import Engine
from ..errors import BuildFailed
from ..gpu import Gpu, Host
from ..spec import GPU_ARCH_RE, GeneratedCheckpoint, ModelSpec

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


@dataclass(frozen=True)
class Job:
    """Everything one step needs; built by buildlib.steps, handed to a backend."""

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


class Backend(ABC):
    """One small protocol per seam: a backend is a class, not an if-chain.

    Everything here that feeds the engine key (resolve_build, convert_fields, toolchain) must be
    cheap and must not import the heavy toolchain: the planner calls it for every engine on
    every run, on CPU-only CI runners too. The heavy work (convert/build/validate) runs in
    subprocesses.
    """

    name: ClassVar[str]
    has_convert: ClassVar[bool] = False

    @abstractmethod
    def resolve_build(self, build: dict[str, Any]) -> dict[str, Any]:
        """Validate models.yaml `build:` and fill every default; raise SpecError(field=option)."""

    @abstractmethod
    def build_schema(self) -> dict[str, Any]:
        """JSON Schema of each `build:` option this backend takes, from the table resolve_build checks against
        (buildlib.schema puts them into the models.yaml schema)."""

    def resolve_refit(self, build: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
        """The resolved `build:` options of a model with `refit: true` (given: what models.yaml set), so that its
        engines are built refittable; raise SpecError(field=option) for an option that contradicts it."""
        return build

    def check_model(self, model: ModelSpec) -> None:  # noqa: B027 - optional hook, most backends accept all
        """Reject models this backend cannot build (SpecError with field set)."""

    def expand_arch(self, arch: str, cpu_isa: str) -> str:
        """A models.yaml arch -> the concrete arch an engine is built for (cpu_isa: this host's, buildlib.isa)."""
        return arch

    @abstractmethod
    def toolchain(self) -> dict[str, str | None]:
        """Versions that shape the artifact; raise BackendUnavailable when it cannot build here."""

    def model_build(self, model: ModelSpec, architecture: str | None) -> dict[str, Any]:
        """The build options every engine of the model is built with, as the key records them. Most resolution
        happens in resolve_build (options alone); this adds what depends on the model architecture
        (`architecture`: the checkpoint's, or None when needs_architecture() said it is not needed). A function
        of model.build and `architecture` only: the planner asks once per distinct pair (models of a fleet
        mostly share one)."""
        return model.build_options

    def needs_architecture(self, model: ModelSpec) -> bool:
        """Whether engine_build() depends on the checkpoint's model architecture (read from its config.json)."""
        return False

    def input_dirs(self, model: ModelSpec, root: Path) -> dict[str, Path]:
        """Directories besides the checkpoint whose contents shape the engine (their digests go into the key),
        by the models.yaml field that names them."""
        return {}

    def convert_fields(self, engine: Engine) -> dict[str, Any]:
        """Conversion options that go into the key (dtype, quantization, tp, pp, model class)."""
        m = engine.model
        return {"dtype": m.dtype, "quantization": m.quant, "tp": engine.tp, "pp": engine.pp,
                "model_class": m.model_class}

    def blocked_reason(self, engine: Engine, host: Host) -> str | None:
        """Why this host cannot build the engine (`needs an sm80 host`), or None if it can. A function of the
        engine's arch and model (not its tp/pp) and the host: the planner asks once per model and arch."""
        if GPU_ARCH_RE.fullmatch(engine.arch) and not host.gpus_of(engine.arch, engine.model.gpu_name):
            gpu = f" with a {engine.model.gpu_name}" if engine.model.gpu_name else ""
            return f"needs an {engine.arch} host{gpu}"
        return None

    def validate_blocked_reason(self, engine: Engine, host: Host) -> str | None:
        """Why this host cannot validate the (built) engine, or None if it can."""
        return self.blocked_reason(engine, host)

    def gpus_needed(self, engine: Engine) -> int:
        """GPUs one build of this engine wants at once (the scheduler may give fewer)."""
        return 1 if GPU_ARCH_RE.fullmatch(engine.arch) else 0

    def validate_gpus(self, engine: Engine) -> int:
        """GPUs validation needs at once (trtllm: one per rank, under mpirun)."""
        return self.gpus_needed(engine)

    def convert_gpus(self, engine: Engine) -> int:
        """GPUs the convert step needs (e.g. 1 for quantization that calibrates)."""
        return 0

    def convert(self, job: Job) -> None:
        """Write the intermediate checkpoint into job.out_dir."""
        raise NotImplementedError(f"{self.name} has no convert stage")

    @abstractmethod
    def build(self, job: Job) -> None:
        """Write the engine files into job.out_dir; raise BuildFailed on failure."""

    def refit_gpus(self, engine: Engine) -> int:
        """GPUs a refit of this engine needs at once (trtllm: as its build; refits on the CPU: 0)."""
        return self.gpus_needed(engine)

    def refit(self, job: Job, source: Path) -> None:
        """Write into job.out_dir the refittable engine in `source` with the weights of job's checkpoint (the
        engine's structure is the same, buildlib.structure); raise BuildFailed when the toolchain refuses."""
        raise BuildFailed(f"the {self.name} backend cannot refit engines")

    @abstractmethod
    def check_complete(self, engine: Engine, out_dir: Path) -> list[str]:
        """Files the engine must have but lacks (an engine is complete only when all exist)."""

    @abstractmethod
    def validate(self, job: Job) -> dict[str, Any]:
        """Load the engine in job.out_dir and run it; return details, raise BuildFailed if wrong."""
