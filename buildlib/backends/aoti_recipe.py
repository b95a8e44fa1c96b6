"""PyTorch AOTInductor, planned: the build options (the envelope the exported graph is specialized for), the
targets (`cpu` is this host's ISA) and the toolchain (torch, transformers, Python, the C++ compiler)."""

from __future__ import annotations

import os
import shutil
import subprocess
from functools import lru_cache
from typing import Any

from ..core.errors import BackendUnavailable, SpecError
from ..core.model import MAX_SIZE, ModelSpec
from .recipe import Recipe, dist_version

# The envelope the exported graph is specialized for (dynamic batch and sequence dims).
BUILD_DEFAULTS: dict[str, int] = {"max_batch_size": 8, "max_input_len": 256, "max_seq_len": 512}
# Inductor's tuning knobs (torch._inductor.config in torch 2.13, both False by default): `max_autotune` benchmarks
# Triton/ATen/CUTLASS candidates for each matmul and convolution and picks the fastest; `coordinate_descent_tuning`
# searches each generated kernel's block sizes and warps around the heuristic's choice. Both make the build longer
# and may make the engine faster: the trade `doit status` shows. In the key only when true, so engines that leave
# them out keep the keys they had before these options existed.
TUNING = {"max_autotune": "benchmark kernel candidates for matmuls/convolutions (torch._inductor.config.max_autotune)",
          "coordinate_descent_tuning": "search each kernel's launch config (torch._inductor.config"
                                       ".coordinate_descent_tuning)"}


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


class AotiRecipe(Recipe):
    name = "aoti"

    def resolve(self, model: ModelSpec) -> dict[str, Any]:
        build = dict(model.build)
        for k in TUNING:
            if k in build and not isinstance(build[k], bool):
                raise SpecError(f"must be true or false; got {build[k]!r}", field=f"build.{k}")
        tuning = {k: True for k in TUNING if build.pop(k, False)}
        for k, v in build.items():
            if k not in BUILD_DEFAULTS:
                import difflib  # only for a typo's suggestion

                close = difflib.get_close_matches(k, list(BUILD_DEFAULTS), n=1)
                close = difflib.get_close_matches(k, [*BUILD_DEFAULTS, *TUNING], n=1)
                hint = f"did you mean {close[0]!r}?" if close else \
                    f"aoti takes {', '.join([*BUILD_DEFAULTS, *TUNING])}"
                raise SpecError(f"unknown aoti build option; {hint}", field=f"build.{k}")
            if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= MAX_SIZE:
                raise SpecError(f"must be an integer from 1 to {MAX_SIZE}; got {v!r}", field=f"build.{k}")
        out = {**BUILD_DEFAULTS, **build, **tuning}
        if out["max_input_len"] > out["max_seq_len"]:
            raise SpecError(f"max_input_len {out['max_input_len']} exceeds max_seq_len {out['max_seq_len']}",
                            field="build.max_input_len")
        if model.parallel != ((1, 1),):
            raise SpecError("aoti builds single-device engines only: use parallel: [{tp: 1, pp: 1}]",
                            field="parallel")
        if model.quantization:
            raise SpecError("aoti does not quantize; remove `quantization:` or use backend: trtllm",
                            field="quantization")
        return out

    def schema(self) -> dict[str, Any]:
        return {**{k: {"type": "integer", "minimum": 1, "maximum": MAX_SIZE, "description": f"aoti {k} (default {v})"}
                   for k, v in BUILD_DEFAULTS.items()},
                **{k: {"type": "boolean", "description": f"aoti: {d}; default false"} for k, d in TUNING.items()}}

    def target(self, arch: str, cpu_isa: str) -> str:
        return cpu_isa if arch == "cpu" else arch

    def toolchain(self) -> dict[str, str | None]:
        torch = dist_version("torch")
        if torch is None:
            raise BackendUnavailable("torch is not installed here (pip install torch==2.13.0 for CPU)")
        import platform  # imported where used: a run with no aoti model does not pay for it at start-up

        return {"torch": torch, "transformers": dist_version("transformers"), "python": platform.python_version(),
                "compiler": _compiler()}
