"""Where things live: every path buildlib derives from models.yaml, in one place.

    <engines_dir>/<model>/<arch>/tp<N>-pp<M>/       an engine (Engine.path)
    <work_dir>/checkpoints/<convert key>/           a converted (intermediate) checkpoint, shared by every arch
    <work_dir>/generated/<generator>-<tag>/         a checkpoint generated from a seed
    <work_dir>/timing-cache/, inductor-cache/       build caches (not part of any key)
    <work_dir>/progress/                            what each running step is doing (buildlib.host.progress)
    <work_dir>/statcache.sqlite, spec-cache.pickle  the stat cache and the parsed models.yaml
    <triton_dir>/<model>/<arch>/tp<N>-pp<M>/        a Triton model repository

Files a build leaves beside its destination (`.X.lock`, `.X.tmp-<id>`, ...) are named by buildlib.host.publish.
"""

from __future__ import annotations

from pathlib import Path

from .engine import Engine
from .key import key_of
from .model import GeneratedCheckpoint, ModelSpec, Project, Spec

CHECKPOINTS = "checkpoints"
GENERATED = "generated"
TIMING_CACHE = "timing-cache"
INDUCTOR_CACHE = "inductor-cache"
PROGRESS = "progress"
STATCACHE = "statcache.sqlite"
SPEC_CACHE = "spec-cache.pickle"
# Every name buildlib makes at the top of a work dir (buildlib.host.confine recognizes a work dir by them).
WORK_NAMES = frozenset({STATCACHE, f"{STATCACHE}-wal", f"{STATCACHE}-shm", SPEC_CACHE, CHECKPOINTS, GENERATED,
                        TIMING_CACHE, INDUCTOR_CACHE, PROGRESS})


def generated_dir(spec: Spec, ckpt: GeneratedCheckpoint) -> Path:
    """A generated checkpoint's dir, named by the generator, its version and its parameters."""
    from .tinyllama import GENERATOR_VERSION

    tag = key_of({"generator": ckpt.generator, "version": GENERATOR_VERSION, "params": ckpt.kwargs})[:16]
    return spec.project.work_dir / GENERATED / f"{ckpt.generator}-{tag}"


def checkpoint_dir(spec: Spec, model: ModelSpec) -> Path:
    """The Hugging Face checkpoint dir a model is built from: its own, or the one generated for it."""
    c = model.checkpoint
    return generated_dir(spec, c) if isinstance(c, GeneratedCheckpoint) else c


def converted_dir(project: Project, convert_key: str) -> Path:
    return project.work_dir / CHECKPOINTS / convert_key


def repository_dir(project: Project, engine: Engine) -> Path:
    """The Triton model repository of an engine."""
    assert project.triton_dir is not None
    return project.triton_dir / engine.model.name / engine.arch / engine.parallel


def progress_dir(work_dir: Path) -> Path:
    return work_dir / PROGRESS


def statcache_path(work_dir: Path) -> Path:
    return work_dir / STATCACHE
