"""TensorRT-LLM 1.x backend: convert through the Python API, build with trtllm-build, validate
with ModelRunner. Every TensorRT-LLM call runs in a subprocess; this module never imports it."""

from __future__ import annotations

import os
import re
import shutil
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path
from typing import Any

from ..engine import Engine
from ..errors import BackendUnavailable, BuildFailed, SpecError
from ..gpu import Host
from ..proc import run_logged, run_worker
from ..spec import GPU_ARCH_RE, ModelSpec
from .base import Backend, Job, dist_version, model_architecture
from .trtllm_options import (
    TRTLLM_SERIES,
    OptionError,
    build_schema,
    check_quantization,
    check_target,
    needs_architecture,
    resolve_build_options,
    resolve_for_model,
    to_argv,
)

SUPPORTED = f"{TRTLLM_SERIES}.x"
# The real wheels come from NVIDIA's package index; the public index holds a stub that refuses to install.
INSTALL_HINT = (f"pip install --extra-index-url https://pypi.nvidia.com 'tensorrt_llm>={TRTLLM_SERIES},"
                f"<{TRTLLM_SERIES.split('.')[0]}.{int(TRTLLM_SERIES.split('.')[1]) + 1}'")
VALIDATE_NEW_TOKENS = 4  # what validation asks the engine to generate
# Quantization that needs ModelOpt calibration on a GPU (the rest is weight-only, done on CPU).
CALIBRATED = frozenset({"FP8", "W8A8_SQ_PER_CHANNEL", "W4A16_AWQ", "W4A8_AWQ", "NVFP4"})


def needs_calibration(quant: dict[str, str | None] | None) -> bool:
    """Activation/weight quantization of these kinds, and any quantized KV cache (its scales), calibrate."""
    return bool(quant) and (quant.get("algo") in CALIBRATED or quant.get("kv_cache") is not None)


TENSORRT_DISTS = ("tensorrt", "tensorrt-cu13", "tensorrt-cu12", "tensorrt_cu13", "tensorrt_cu12")


def _release(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", v.split("+")[0])[:3])


def _no_post(version: str) -> str:
    """Without a re-upload suffix: `10.14.1.48.post1` holds the same library as `10.14.1.48`."""
    return re.sub(r"\.post\d+$", "", version)


def _dist_version(*names: str) -> str | None:
    got = dist_version(*names)
    return None if got is None else _no_post(got)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-")


def _installed() -> tuple[str, bool] | None:
    """(version, whether it provides the trtllm-build console script) of the installed tensorrt_llm
    distribution, from its metadata alone (no import: cheap, and works on a CPU-only planner)."""
    for name in ("tensorrt_llm", "tensorrt-llm"):
        try:
            dist = distribution(name)
        except PackageNotFoundError:
            continue
        builder = any(ep.group == "console_scripts" and ep.name == "trtllm-build" for ep in dist.entry_points)
        return dist.version, builder
    return None


def _sm(arch: str) -> int:
    return int(re.sub(r"\D", "", arch))


class TrtllmBackend(Backend):
    name = "trtllm"
    has_convert = True

    def resolve_build(self, build: dict[str, Any]) -> dict[str, Any]:
        try:
            return resolve_build_options(build)
        except OptionError as e:
            raise SpecError(e.message, field=e.field) from None

    def build_schema(self) -> dict[str, Any]:
        return build_schema()

    def resolve_refit(self, build: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
        """A refittable engine is built with --strip_plan (BuilderFlag.REFIT_INDIVIDUAL + STRIP_PLAN in 1.2.x's
        Builder.create_builder_config), so the key records strip_plan: true."""
        if given.get("strip_plan") is False:
            raise SpecError("refit: true builds with --strip_plan (the refittable engine trtllm-refit needs); "
                            "remove strip_plan: false, or set refit: false", field="strip_plan")
        return {**build, "strip_plan": True}

    def check_model(self, model: ModelSpec) -> None:
        """What the real 1.2.x would refuse after GPU time is spent, refused while models.yaml is read."""
        for a in model.archs:
            if not GPU_ARCH_RE.fullmatch(a):
                raise SpecError(f"trtllm builds only for GPU archs (sm80, sm90, ...), not {a!r}", field="archs")
        opts = model.build_options
        try:
            for a in model.archs:
                check_target(opts, _sm(a))
            check_quantization(opts, (model.quant or {}).get("algo"))
            if needs_architecture(opts.get):
                ckpt = model.checkpoint if isinstance(model.checkpoint, Path) else Path()
                resolve_for_model(opts, model_architecture(model, ckpt))
        except OptionError as e:
            raise SpecError(e.message, field=f"build.{e.field}") from None
        if model.validate and opts["kv_cache_type"] == "disabled":
            raise SpecError(f"an engine without KV cache runs the context phase only (ModelRunner.generate raises "
                            f"for more than one new token) and validation generates {VALIDATE_NEW_TOKENS}; "
                            "set validate: false for this model, or another kv_cache_type",
                            field="build.kv_cache_type")

    def needs_architecture(self, model: ModelSpec) -> bool:
        return needs_architecture(model.build_option)

    def model_build(self, model: ModelSpec, architecture: str | None) -> dict[str, Any]:
        try:
            return resolve_for_model(model.build_options, architecture)
        except OptionError as e:
            raise SpecError(e.message, field=f"build.{e.field}") from None

    def input_dirs(self, model: ModelSpec, root: Path) -> dict[str, Path]:
        dirs = model.build_option("lora_dir") or ()
        return {f"build.lora_dir[{i}]": root / d for i, d in enumerate(dirs)}

    def toolchain(self) -> dict[str, str | None]:
        """Versions from package metadata (no import: cheap, and works on CPU-only planners).

        Gated by capability: the TensorRT engine builder exists where the distribution provides the
        trtllm-build console script (releases after 1.2.x removed it); then by the series the option
        table was checked against."""
        got = _installed()
        if got is None:
            raise BackendUnavailable(f"tensorrt_llm is not installed here; on a GPU host: {INSTALL_HINT}")
        trtllm, has_builder = got
        if not has_builder:
            raise BackendUnavailable(
                f"tensorrt_llm {trtllm} has no TensorRT engine builder (its distribution provides no trtllm-build; "
                f"the TensorRT engine workflow was removed after 1.2.x); install {SUPPORTED}: {INSTALL_HINT}")
        if ".".join(str(x) for x in _release(trtllm)[:2]) != TRTLLM_SERIES:
            raise BackendUnavailable(
                f"tensorrt_llm {trtllm} is not supported: the trtllm-build option table is checked against "
                f"{SUPPORTED} only (each series has its own options and defaults); install {SUPPORTED}: {INSTALL_HINT}")
        if shutil.which("trtllm-build") is None:
            raise BackendUnavailable(f"tensorrt_llm {trtllm} is installed but trtllm-build is not on PATH")
        return {"tensorrt_llm": _no_post(trtllm), "tensorrt": _dist_version(*TENSORRT_DISTS),
                "cuda": _dist_version("nvidia-cuda-runtime-cu13", "nvidia-cuda-runtime-cu12", "nvidia-cuda-runtime")}

    def gpus_needed(self, engine: Engine) -> int:
        return min(engine.world_size, engine.model.max_workers or engine.world_size)

    def validate_gpus(self, engine: Engine) -> int:
        return engine.world_size  # mpirun -n world_size: one GPU per rank

    def validate_blocked_reason(self, engine: Engine, host: Host) -> str | None:
        """The runtime puts rank r on GPU r % gpus_per_node (ModelRunner.from_engine): one GPU per rank, unshared."""
        blocked = self.blocked_reason(engine, host)
        have = len(host.gpus_of(engine.arch, engine.model.gpu_name))
        if blocked or have >= engine.world_size:
            return blocked
        return (f"validation needs {engine.world_size} {engine.arch} GPUs (one per rank); this host has {have}: "
                f"needs an {engine.arch} host with {engine.world_size} GPUs")

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
        # Written beside the cache it replaces (the work dir), so the replace is a rename on one filesystem
        # wherever engines_dir lives; the name is this build's own, so concurrent builds never share it.
        out_cache = cache.with_name(f".{cache.name}.{os.getpid()}-{os.urandom(4).hex()}.tmp")
        # --strip_plan writes a weight-stripped engine, unusable until refitted (examples/sample_weight_stripping):
        # it is built beside the temp dir and refitted into it with the very checkpoint it was built from.
        stripped = job.out_dir.with_name(job.out_dir.name + "-stripped") if e.model.build_options["strip_plan"] \
            else None
        argv = ["trtllm-build", "--checkpoint_dir", str(job.converted), "--output_dir", str(stripped or job.out_dir),
                *to_argv(e.model.build_options, str(job.root)),
                "--workers", str(max(1, min(e.world_size, len(job.gpus)))),
                "--input_timing_cache", str(cache), "--output_timing_cache", str(out_cache),
                "--log_level", "info"]
        try:
            run_logged(argv, job.log, f"build:{e.id}", env=job.visible_env(), cwd=job.work_dir)
            if out_cache.exists():
                os.replace(out_cache, cache)  # whole-file replace: concurrent builds never mix caches
            if stripped is not None:
                self.refit(job, stripped)
        finally:
            out_cache.unlink(missing_ok=True)
            if stripped is not None:
                shutil.rmtree(stripped, ignore_errors=True)

    def refit(self, job: Job, source: Path) -> None:
        """`trtllm-refit --engine_dir SOURCE --checkpoint_dir CONVERTED --output_dir OUT` (1.2.x
        tensorrt_llm/commands/refit.py): every rank's refittable weights replaced by the converted checkpoint's,
        on a GPU of the engine's arch; no trtllm-build."""
        e = job.engine
        if not job.gpus:
            raise BuildFailed(f"refit:{e.id} needs an {e.arch} GPU; none was given")
        assert job.converted is not None
        if shutil.which("trtllm-refit") is None:
            raise BuildFailed(f"refit:{e.id}: trtllm-refit is not on PATH (tensorrt_llm {SUPPORTED} provides it)")
        run_logged(["trtllm-refit", "--engine_dir", str(source), "--checkpoint_dir", str(job.converted),
                    "--output_dir", str(job.out_dir), "--log_level", "info"],
                   job.log, f"refit:{e.id}", env=job.visible_env(), cwd=job.work_dir)

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
            "engine_dir": str(job.out_dir), "max_new_tokens": VALIDATE_NEW_TOKENS, "world_size": e.world_size,
        }, job.log, f"validate:{e.id}", env=job.visible_env(), cwd=job.work_dir, prefix=argv_prefix)

