"""TensorRT-LLM 1.2.x, planned: the trtllm-build option table (trtllm_options), what a real 1.2.x would refuse,
and the toolchain read from package metadata. This module never imports TensorRT-LLM (buildlib.backends.recipe);
the steps are trtllm_runner's."""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path
from typing import Any

from ..core.errors import BackendUnavailable, SpecError
from ..core.model import GPU_ARCH_RE, ModelSpec
from .recipe import Recipe, dist_version, model_architecture
from .trtllm_options import (
    TRTLLM_SERIES,
    OptionError,
    build_schema,
    check_quantization,
    check_target,
    needs_architecture,
    resolve_build_options,
    resolve_for_model,
)

SUPPORTED = f"{TRTLLM_SERIES}.x"
# The real wheels come from NVIDIA's package index; the public index holds a stub that refuses to install.
INSTALL_HINT = (f"pip install --extra-index-url https://pypi.nvidia.com 'tensorrt_llm>={TRTLLM_SERIES},"
                f"<{TRTLLM_SERIES.split('.')[0]}.{int(TRTLLM_SERIES.split('.')[1]) + 1}'")
# What the 2026 upstream change means, in one line (also in the README).
REMOVED = ("TensorRT-LLM main removed trtllm-build, trtllm-refit, the TensorRT engine runtime and the "
           "inflight_batcher_llm Triton backend in mid-2026 (PRs #15763, #15767, #15907, #15918; its docs have a "
           f"migration guide), so {TRTLLM_SERIES}.x is the last series with them")
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


class TrtllmRecipe(Recipe):
    name = "trtllm"
    has_convert = True

    def resolve(self, model: ModelSpec) -> dict[str, Any]:
        """Every trtllm-build option resolved as 1.2.x would (trtllm_options), and what the real 1.2.x would refuse
        after GPU time is spent refused now. A refittable engine (refit: true) is built with --strip_plan
        (BuilderFlag.REFIT_INDIVIDUAL + STRIP_PLAN in 1.2.x's Builder.create_builder_config), so the key records
        strip_plan: true."""
        given = model.build_options
        try:
            opts = resolve_build_options(given)
        except OptionError as e:
            raise SpecError(e.message, field=f"build.{e.field}") from None
        if model.refit:
            if given.get("strip_plan") is False:
                raise SpecError("refit: true builds with --strip_plan (the refittable engine trtllm-refit needs); "
                                "remove strip_plan: false, or set refit: false", field="build.strip_plan")
            if opts["fast_build"]:  # --fast_build sets manage_weights: weights kept beside the plan, not refitted
                raise SpecError("refit: true cannot keep its engines current with fast_build: fast_build keeps weights "
                                "in rank<N>_managed_weights.safetensors beside each plan, which trtllm-refit does not "
                                "update; remove fast_build, or set refit: false", field="build.fast_build")
            opts["strip_plan"] = True
        for a in model.archs:
            if not GPU_ARCH_RE.fullmatch(a):
                raise SpecError(f"trtllm builds only for GPU archs (sm80, sm90, ...), not {a!r}", field="archs")
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
        return opts

    def schema(self) -> dict[str, Any]:
        return build_schema()

    def build_fields(self, model: ModelSpec, architecture: Callable[[], str | None]) -> dict[str, Any]:
        """resolve_for_model: the architecture is read only where the options depend on it (needs_architecture),
        never for the default option set, so a no-op reads no config.json."""
        try:
            return resolve_for_model(model.build_options,
                                     architecture() if needs_architecture(model.build_option) else None)
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
                f"tensorrt_llm {trtllm} has no TensorRT engine builder (its distribution provides no trtllm-build): "
                f"{REMOVED}; install {SUPPORTED} for this backend: {INSTALL_HINT}")
        if ".".join(str(x) for x in _release(trtllm)[:2]) != TRTLLM_SERIES:
            raise BackendUnavailable(
                f"tensorrt_llm {trtllm} is not supported: the trtllm-build option table is checked against "
                f"{SUPPORTED} only (each series has its own options and defaults); install {SUPPORTED}: {INSTALL_HINT}")
        if shutil.which("trtllm-build") is None:
            raise BackendUnavailable(f"tensorrt_llm {trtllm} is installed but trtllm-build is not on PATH")
        return {"tensorrt_llm": _no_post(trtllm), "tensorrt": _dist_version(*TENSORRT_DISTS),
                "cuda": _dist_version("nvidia-cuda-runtime-cu13", "nvidia-cuda-runtime-cu12", "nvidia-cuda-runtime")}

