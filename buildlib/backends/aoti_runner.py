"""PyTorch AOTInductor, run: torch.export + aoti_compile_and_package in a worker subprocess (aoti_worker), on
the CPU or on one GPU; validation compares the compiled engine's logits with eager PyTorch."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from ..core.engine import Engine
from ..core.errors import BuildFailed
from ..core.layout import INDUCTOR_CACHE
from ..core.model import GPU_ARCH_RE
from ..host.gpu import Gpu, Host
from ..host.proc import run_worker
from .aoti_refit import fast_refit
from .recipe import dist_version
from .runner import Job, Runner, Step, require_files

PACKAGE = "model.pt2"
WEIGHTS = "weights.safetensors"  # refit: true: the package's constants, outside its compiled code
WORKER = "buildlib.backends.aoti_worker"


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in ".-" else "-" for c in text).strip("-") or "none"


def outputs(engine: Engine) -> tuple[str, ...]:
    """The files a complete engine has: the package, and its weights where it is refittable."""
    return (PACKAGE, *((WEIGHTS,) if engine.model.refit else ()))


class AotiRunner(Runner):
    name = "aoti"

    def gpus(self, engine: Engine, step: Step) -> int:
        if step == "refit":
            return 0  # the new weights are read and written on the CPU; validation runs them on the GPU
        return super().gpus(engine, step)

    def blocked(self, engine: Engine, host: Host, step: Step = "build") -> str | None:
        if GPU_ARCH_RE.fullmatch(engine.arch):
            return super().blocked(engine, host, step)
        return None if engine.arch == host.cpu_isa else f"needs an {engine.arch} host"

    def build_cache(self, engine: Engine, gpus: tuple[Gpu, ...], work_dir: Path) -> tuple[str, Path] | None:
        """Inductor's caches (FX graphs, generated kernels and their compiled objects, autotune results), per (GPU
        name or CPU ISA, torch version): what Inductor reuses across compiles; not part of the key."""
        where = gpus[0].name if GPU_ARCH_RE.fullmatch(engine.arch) and gpus else engine.arch
        name = _slug(f"{where}-torch{dist_version('torch') or 'none'}")
        return f"inductor/{name}", work_dir / INDUCTOR_CACHE / name

    def _request(self, job: Job, op: str) -> dict[str, Any]:
        e = job.engine
        cache = self.build_cache(e, job.gpus, job.work_dir)
        assert cache is not None
        return {"op": op, "checkpoint": str(job.checkpoint), "package": str(job.out_dir / PACKAGE),
                "dtype": e.model.dtype, "device": "cuda" if GPU_ARCH_RE.fullmatch(e.arch) else "cpu",
                "cache_dir": str(cache[1]), "refit": e.model.refit,
                "weights": str(job.out_dir / WEIGHTS), **e.model.build_options}

    def build(self, job: Job) -> None:
        e = job.engine
        if GPU_ARCH_RE.fullmatch(e.arch) and not job.gpus:
            raise BuildFailed(f"build:{e.id} needs an {e.arch} GPU; none was given")
        run_worker(WORKER, self._request(job, "compile"), job.log, f"build:{e.id}", env=job.visible_env(),
                   cwd=job.work_dir)
        require_files(f"build:{e.id}", job.out_dir, outputs(e))

    def refit(self, job: Job, source: Path) -> None:
        """A copy of the old package (its compiled code is the same: same structure) and the new checkpoint's
        weights under the names, dtypes and shapes of the old weights.safetensors; no export, no compile."""
        e = job.engine
        try:
            shutil.copyfile(source / PACKAGE, job.out_dir / PACKAGE)
        except OSError as err:
            raise BuildFailed(f"refit:{e.id}: cannot copy {source / PACKAGE}: {err.strerror}") from None
        why = fast_refit(source / WEIGHTS, job.checkpoint, job.out_dir / WEIGHTS)
        with open(job.log, "a") as log:
            log.write(f"refit: copied the new weights from {job.checkpoint} (same names, dtypes, shapes)\n"
                      if why is None else f"refit: {why}; loading the checkpoint with transformers instead\n")
        if why is not None:
            run_worker(WORKER, {**self._request(job, "refit"), "source_weights": str(source / WEIGHTS)},
                       job.log, f"refit:{e.id}", cwd=job.work_dir)
        require_files(f"refit:{e.id}", job.out_dir, outputs(e))

    def validate(self, job: Job) -> dict[str, Any]:
        e = job.engine
        result = run_worker(WORKER, self._request(job, "validate"), job.log, f"validate:{e.id}",
                            env=job.visible_env(), cwd=job.work_dir)
        if not result.get("ok"):
            raise BuildFailed(f"validate:{e.id}: compiled engine disagrees with eager PyTorch: "
                              f"max_rel_err={result.get('max_rel_err')} (tolerance {result.get('tolerance')}); "
                              f"log: {job.log}")
        return result
