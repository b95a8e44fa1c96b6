"""TensorRT-LLM 1.x backend: convert through the Python API, build with trtllm-build, validate
with ModelRunner. Every TensorRT-LLM call runs in a subprocess; this module never imports it."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

from ..engine import Engine
from ..errors import BackendUnavailable, BuildFailed, SpecError
from ..proc import run_logged, run_worker
from ..spec import GPU_ARCH_RE, ModelSpec
from .base import Backend, Job, dist_version
from .trtllm_options import OptionError, resolve_build_options, to_argv

SUPPORTED = "1.x up to 1.2.x"
# Quantization that needs ModelOpt calibration on a GPU (the rest is weight-only, done on CPU).
CALIBRATED = frozenset({"FP8", "W8A8_SQ_PER_CHANNEL", "W4A16_AWQ", "W4A8_AWQ", "NVFP4"})


def needs_calibration(quant: dict[str, str | None] | None) -> bool:
    """Activation/weight quantization of these kinds, and any quantized KV cache (its scales), calibrate."""
    return bool(quant) and (quant.get("algo") in CALIBRATED or quant.get("kv_cache") is not None)
TENSORRT_DISTS = ("tensorrt", "tensorrt-cu13", "tensorrt-cu12", "tensorrt_cu13", "tensorrt_cu12")


def _release(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", v.split("+")[0])[:3])


def _dist_version(*names: str) -> str | None:
    """dist_version without a re-upload suffix: `10.14.1.48.post1` holds the same library as `10.14.1.48`."""
    got = dist_version(*names)
    return None if got is None else re.sub(r"\.post\d+$", "", got)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-")


class TrtllmBackend(Backend):
    name = "trtllm"
    has_convert = True

    def resolve_build(self, build: dict[str, Any]) -> dict[str, Any]:
        try:
            return resolve_build_options(build)
        except OptionError as e:
            raise SpecError(e.message, field=e.field) from None

    def check_model(self, model: ModelSpec) -> None:
        for a in model.archs:
            if not GPU_ARCH_RE.match(a):
                raise SpecError(f"trtllm builds only for GPU archs (sm80, sm90, ...), not {a!r}", field="archs")

    def toolchain(self) -> dict[str, str | None]:
        """Versions from package metadata (no import: cheap, and works on CPU-only planners)."""
        trtllm = _dist_version("tensorrt_llm", "tensorrt-llm")
        if trtllm is None:
            raise BackendUnavailable(
                "tensorrt_llm is not installed here (pip install tensorrt_llm==1.2.1 on a GPU host)")
        if _release(trtllm) >= (1, 3):
            raise BackendUnavailable(
                f"tensorrt_llm {trtllm} has no TensorRT engine backend (trtllm-build and checkpoint conversion "
                f"were removed after 1.2.x); this backend supports {SUPPORTED}: pip install 'tensorrt_llm<1.3'")
        if _release(trtllm) < (1,):
            raise BackendUnavailable(f"tensorrt_llm {trtllm} is too old; this backend supports {SUPPORTED}")
        if shutil.which("trtllm-build") is None:
            raise BackendUnavailable(f"tensorrt_llm {trtllm} is installed but trtllm-build is not on PATH")
        return {"tensorrt_llm": trtllm, "tensorrt": _dist_version(*TENSORRT_DISTS),
                "cuda": _dist_version("nvidia-cuda-runtime-cu13", "nvidia-cuda-runtime-cu12", "nvidia-cuda-runtime")}

    def gpus_needed(self, engine: Engine) -> int:
        return min(engine.world_size, engine.model.max_workers or engine.world_size)

    def validate_gpus(self, engine: Engine) -> int:
        return engine.world_size  # mpirun -n world_size: one GPU per rank

    def convert_gpus(self, engine: Engine) -> int:
        return 1 if needs_calibration(engine.model.quant) else 0

    def convert(self, job: Job) -> None:
        e = job.engine
        run_worker("buildlib.backends.trtllm_convert", {
            "checkpoint": str(job.checkpoint), "out_dir": str(job.out_dir), "dtype": e.model.dtype,
            "tp": e.tp, "pp": e.pp, "quantization": e.model.quant, "model_class": e.model.model_class,
        }, job.log, f"convert:{e.convert_id}", env=job.visible_env(), cwd=job.work_dir)

    def timing_cache(self, job: Job) -> Path:
        """Per (GPU name, TensorRT version): it speeds rebuilds and is not part of the key."""
        gpu = job.gpus[0].name if job.gpus else "none"
        trt = self.toolchain().get("tensorrt") or "unknown"
        return job.work_dir / "timing-cache" / f"{_slug(gpu)}-trt{_slug(trt)}.cache"

    def build(self, job: Job) -> None:
        e = job.engine
        if not job.gpus:
            raise BuildFailed(f"build:{e.id} needs at least one {e.arch} GPU; none was given")
        assert job.converted is not None
        cache = self.timing_cache(job)
        cache.parent.mkdir(parents=True, exist_ok=True)
        out_cache = job.out_dir.parent / f".{job.out_dir.name}.timing.cache"
        argv = ["trtllm-build", "--checkpoint_dir", str(job.converted), "--output_dir", str(job.out_dir),
                *to_argv(e.model.build_options),
                "--workers", str(max(1, min(e.world_size, len(job.gpus)))),
                "--input_timing_cache", str(cache), "--output_timing_cache", str(out_cache),
                "--log_level", "info"]
        try:
            run_logged(argv, job.log, f"build:{e.id}", env=job.visible_env(), cwd=job.work_dir)
            if out_cache.exists():
                os.replace(out_cache, cache)  # whole-file replace: concurrent builds never mix caches
        finally:
            out_cache.unlink(missing_ok=True)

    def check_complete(self, engine: Engine, out_dir: Path) -> list[str]:
        want = ["config.json", *(f"rank{r}.engine" for r in range(engine.world_size))]
        return [f for f in want if not (out_dir / f).is_file()]

    def validate(self, job: Job) -> dict[str, Any]:
        e = job.engine
        argv_prefix: list[str] = []
        if e.world_size > 1:
            mpirun = shutil.which("mpirun")
            if mpirun is None:
                raise BuildFailed(
                    f"validate:{e.id}: a {e.world_size}-rank engine runs under MPI; mpirun is not on PATH")
            argv_prefix = [mpirun, "-n", str(e.world_size), "--allow-run-as-root"]
        return run_worker("buildlib.backends.trtllm_validate", {
            "engine_dir": str(job.out_dir), "max_new_tokens": 4, "world_size": e.world_size,
        }, job.log, f"validate:{e.id}", env=job.visible_env(), cwd=job.work_dir, prefix=argv_prefix)

