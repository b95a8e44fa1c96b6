"""PyTorch AOTInductor backend: torch.export + aoti_compile_and_package, on CPU or GPU."""

from __future__ import annotations

import os
import shutil
import subprocess
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..engine import Engine
from ..errors import BackendUnavailable, BuildFailed, SpecError
from ..gpu import Host
from ..proc import run_worker
from ..spec import GPU_ARCH_RE, MAX_SIZE, ModelSpec
from .aoti_refit import fast_refit
from .base import Backend, Job, dist_version

# The envelope the exported graph is specialized for (dynamic batch and sequence dims).
BUILD_DEFAULTS: dict[str, int] = {"max_batch_size": 8, "max_input_len": 256, "max_seq_len": 512}
PACKAGE = "model.pt2"
WEIGHTS = "weights.safetensors"  # refit: true: the package's constants, outside its compiled code


@lru_cache(maxsize=1)
def _compiler() -> str | None:
    """`$CXX --version` (Inductor compiles with $CXX when set, else c++): it shapes the artifact."""
    cxx = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if cxx is None:
        return None
    try:
        return subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=30).stdout.splitlines()[0]
    except (OSError, subprocess.TimeoutExpired, IndexError):
        return None


class AotiBackend(Backend):
    name = "aoti"

    def resolve_build(self, build: dict[str, Any]) -> dict[str, Any]:
        for k, v in build.items():
            if k not in BUILD_DEFAULTS:
                import difflib  # only for a typo's suggestion

                close = difflib.get_close_matches(k, list(BUILD_DEFAULTS), n=1)
                hint = f"did you mean {close[0]!r}?" if close else f"aoti takes {', '.join(BUILD_DEFAULTS)}"
                raise SpecError(f"unknown aoti build option; {hint}", field=k)
            if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= MAX_SIZE:
                raise SpecError(f"must be an integer from 1 to {MAX_SIZE}; got {v!r}", field=k)
        out = {**BUILD_DEFAULTS, **build}
        if out["max_input_len"] > out["max_seq_len"]:
            raise SpecError(f"max_input_len {out['max_input_len']} exceeds max_seq_len {out['max_seq_len']}",
                            field="max_input_len")
        return out

    def build_schema(self) -> dict[str, Any]:
        return {k: {"type": "integer", "minimum": 1, "maximum": MAX_SIZE, "description": f"aoti {k} (default {v})"}
                for k, v in BUILD_DEFAULTS.items()}

    def check_model(self, model: ModelSpec) -> None:
        if model.parallel != ((1, 1),):
            raise SpecError("aoti builds single-device engines only: use parallel: [{tp: 1, pp: 1}]",
                            field="parallel")
        if model.quantization:
            raise SpecError("aoti does not quantize; remove `quantization:` or use backend: trtllm",
                            field="quantization")

    def expand_arch(self, arch: str, cpu_isa: str) -> str:
        return cpu_isa if arch == "cpu" else arch

    def toolchain(self) -> dict[str, str | None]:
        torch = dist_version("torch")
        if torch is None:
            raise BackendUnavailable("torch is not installed here (pip install torch==2.13.0 for CPU)")
        import platform  # imported where used: a run with no aoti model does not pay for it at start-up

        return {"torch": torch, "transformers": dist_version("transformers"), "python": platform.python_version(),
                "compiler": _compiler()}

    def blocked_reason(self, engine: Engine, host: Host) -> str | None:
        if GPU_ARCH_RE.fullmatch(engine.arch):
            return super().blocked_reason(engine, host)
        return None if engine.arch == host.cpu_isa else f"needs an {engine.arch} host"

    def _request(self, job: Job, op: str) -> dict[str, Any]:
        e = job.engine
        return {"op": op, "checkpoint": str(job.checkpoint), "package": str(job.out_dir / PACKAGE),
                "dtype": e.model.dtype, "device": "cuda" if GPU_ARCH_RE.fullmatch(e.arch) else "cpu",
                "cache_dir": str(job.work_dir / "inductor-cache"), "refit": e.model.refit,
                "weights": str(job.out_dir / WEIGHTS), **e.model.build_options}

    def build(self, job: Job) -> None:
        e = job.engine
        if GPU_ARCH_RE.fullmatch(e.arch) and not job.gpus:
            raise BuildFailed(f"build:{e.id} needs an {e.arch} GPU; none was given")
        run_worker("buildlib.backends.aoti_worker", self._request(job, "compile"), job.log, f"build:{e.id}",
                   env=job.visible_env(), cwd=job.work_dir)

    def refit_gpus(self, engine: Engine) -> int:
        return 0  # the new weights are read and written on the CPU; validation runs them on the GPU

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
        if why is None:
            return
        run_worker("buildlib.backends.aoti_worker", {**self._request(job, "refit"),
                                                     "source_weights": str(source / WEIGHTS)},
                   job.log, f"refit:{e.id}", cwd=job.work_dir)

    def check_complete(self, engine: Engine, out_dir: Path) -> list[str]:
        return [f for f in (PACKAGE, *((WEIGHTS,) if engine.model.refit else ())) if not (out_dir / f).is_file()]

    def validate(self, job: Job) -> dict[str, Any]:
        e = job.engine
        result = run_worker("buildlib.backends.aoti_worker", self._request(job, "validate"), job.log,
                            f"validate:{e.id}", env=job.visible_env(), cwd=job.work_dir)
        if not result.get("ok"):
            raise BuildFailed(f"validate:{e.id}: compiled engine disagrees with eager PyTorch: "
                              f"max_rel_err={result.get('max_rel_err')} (tolerance {result.get('tolerance')}); "
                              f"log: {job.log}")
        return result

