"""The vocabulary of models.yaml: model, project and spec types, and the names and limits every layer checks against.

Types only, no parsing (buildlib.spec reads models.yaml into these): backends, the planner, the steps and the
Ray workers share them without importing the loader. Picklable: they travel to doit workers and Ray.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Used with fullmatch (`$` alone would let a trailing newline through) and ASCII only (no Unicode digits).
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", re.ASCII)
GPU_ARCH_RE = re.compile(r"sm[0-9]{2,3}[a-z]?", re.ASCII)
CPU_ARCH_RE = re.compile(r"cpu|(x86_64|aarch64|ppc64le|s390x)(-[a-z0-9]+)?", re.ASCII)
GROUP_NAMES = frozenset({"engines", "convert", "build", "validate", "checkpoint", "default"})
DTYPES = ("float16", "bfloat16", "float32")
# models.yaml spelling -> TensorRT-LLM QuantAlgo member names.
QUANT_ALGOS = {
    "fp8": "FP8",
    "int8_sq": "W8A8_SQ_PER_CHANNEL",
    "int4_awq": "W4A16_AWQ",
    "w4a8_awq": "W4A8_AWQ",
    "nvfp4": "NVFP4",
    "int8_wo": "W8A16",
    "int4_wo": "W4A16",
}
KV_CACHE_QUANT = {"fp8": "FP8", "int8": "INT8"}
GENERATORS = {"tinyllama": ("seed", "hidden_size", "num_hidden_layers", "num_attention_heads",
                            "num_key_value_heads", "intermediate_size", "vocab_size",
                            "max_position_embeddings", "dtype")}

# Sizes that no host could build: refused while models.yaml is read, not after hours of work.
MAX_SIZE = 2**31 - 1  # any size option: TensorRT and torch.export dims are 32-bit
MAX_WORLD_SIZE = 64  # tp x pp: more GPUs than any host or NVLink domain holds for one engine
# A generated checkpoint is for demos and tests: bounded dimensions, at most ~1e9 parameters (4 GB in fp32).
MAX_GENERATED_PARAMS = 1_000_000_000
GENERATED_LIMITS = {"hidden_size": 16384, "num_hidden_layers": 256, "num_attention_heads": 256,
                    "num_key_value_heads": 256, "intermediate_size": 65536, "vocab_size": 1 << 20,
                    "max_position_embeddings": 1 << 20}
TINYLLAMA_DEFAULTS = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                      "intermediate_size": 128, "vocab_size": 256, "max_position_embeddings": 512}

CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
# The five models of the inflight_batcher_llm Triton repository (triton_backend/all_models in 1.2.x).
TRITON_MODELS = ("tensorrt_llm", "preprocessing", "postprocessing", "ensemble", "tensorrt_llm_bls")

TOP_KEYS = {"defaults", "models", "engines_dir", "work_dir", "store", "triton_templates", "triton_dir"}
MODEL_KEYS = {"backend", "dtype", "quantization", "archs", "parallel", "build", "gpu_name",
              "max_workers", "validate", "model_class", "trust_remote_code", "triton", "refit", "perf_gate"}
NAMED_KEYS = {"name", "checkpoint"}


@dataclass(frozen=True)
class GeneratedCheckpoint:
    """A checkpoint produced by a doit task from a seed, e.g. the embedded tiny Llama."""

    generator: str
    params: tuple[tuple[str, Any], ...]

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.params)


@dataclass(frozen=True)
class ModelSpec:
    """One `models:` entry with defaults applied. Picklable: it travels to doit workers and Ray."""

    name: str
    checkpoint: Path | GeneratedCheckpoint
    backend: str
    dtype: str
    quantization: tuple[tuple[str, str | None], ...] | None
    archs: tuple[str, ...]
    parallel: tuple[tuple[int, int], ...]
    build: tuple[tuple[str, Any], ...]  # resolved by the backend, sorted
    gpu_name: str | None
    max_workers: int | None
    validate: bool
    model_class: str | None
    line: int | None = None
    trust_remote_code: bool = False  # allow checkpoints with custom code (auto_map) or pickle weights
    triton: tuple[tuple[str, str | int | float | bool], ...] = ()  # Triton config.pbtxt values (buildlib.triton)
    refit: bool = False  # engines built refittable; a weights-only change is refitted (buildlib.structure)
    perf_gate: float | None = None  # rebuilt engines below this share of the replaced one's tokens/s: regressed

    @property
    def build_options(self) -> dict[str, Any]:
        return dict(self.build)

    def build_option(self, name: str) -> Any:
        """One build option (None if unset), without build_options' copy of all ~60: the planner asks a few per
        model on every run. The lookup dict is kept in __dict__ (frozen), never handed out."""
        got = self.__dict__.get("_build_dict")
        if got is None:
            got = self.__dict__["_build_dict"] = dict(self.build)
        return got.get(name)

    @property
    def quant(self) -> dict[str, str | None] | None:
        return dict(self.quantization) if self.quantization else None


@dataclass(frozen=True)
class StoreSpec:
    """models.yaml `store:`: where engines are shared, and who may put them there and be believed.

    push: False makes every run read-only (restore, never write). sign: how pushes are signed (OpenSSF Model
    Signing): (("key", PEM),) an EC private key; (("key", PEM), ("certificate", PEM), ("chain", PEM)...) PKI;
    (("sigstore", "ambient"),) keyless. trust: the policy readers apply; each entry (("key", PEM),) a public key,
    (("certificate_chain", PEM)...) a root of trust, or (("sigstore_identity", ID), ("sigstore_issuer", URL)). Paths are
    absolute (resolved against models.yaml's dir). The environment may override each (buildlib.store.settings)."""

    url: str
    push: bool = True
    sign: tuple[tuple[str, str], ...] = ()
    trust: tuple[tuple[tuple[str, str], ...], ...] = ()


@dataclass(frozen=True)
class Project:
    """Where things live: models.yaml, engines/, the work dir (.buildlib/), the optional store."""

    models_path: Path
    engines_dir: Path
    work_dir: Path
    store: StoreSpec | None = None
    triton_templates: Path | None = None  # tensorrtllm_backend's all_models/inflight_batcher_llm (1.2.x)
    triton_dir: Path | None = None  # where `triton:` tasks write model repositories (default <root>/triton)

    @property
    def root(self) -> Path:
        return self.models_path.parent


@dataclass(frozen=True)
class Spec:
    project: Project
    models: tuple[ModelSpec, ...] = field(default_factory=tuple)

    def model(self, name: str) -> ModelSpec:
        for m in self.models:
            if m.name == name:
                return m
        raise KeyError(name)
