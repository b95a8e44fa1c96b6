"""TensorRT-LLM 1.2.x, run: convert through the Python API (trtllm_convert), build with trtllm-build, refit with
trtllm-refit, validate with ModelRunner under mpirun (trtllm_validate). Every TensorRT-LLM call runs in a
subprocess; this module never imports it. docs/tensorrt-llm-contract.md: each call, checked against the source."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

from ..core.engine import Engine
from ..core.errors import BuildFailed
from ..core.layout import TIMING_CACHE
from ..core.manifest import NOT_OUTPUTS
from ..host.gpu import Gpu, Host
from ..host.proc import run_logged, run_worker
from .runner import Job, Runner, Step, require_files
from .trtllm_options import to_argv
from .trtllm_recipe import SUPPORTED, VALIDATE_NEW_TOKENS, TrtllmRecipe, needs_calibration


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-")


def outputs(engine: Engine) -> list[str]:
    """The files a complete engine has, as 1.2.x's builder.py Engine.save() writes them: config.json, one
    rank<r>.engine per rank, rank<r>_managed_weights.safetensors beside each with --fast_build (it sets the
    manage_weights plugin), and a copy of each LoRA adapter the config names (lora/<i>/adapter_config.json, or
    lora/<i>.nemo), since the config's lora_dir points at those copies."""
    opt = engine.model.build_option
    ranks = range(engine.world_size)
    files = ["config.json", *(f"rank{r}.engine" for r in ranks)]
    if opt("fast_build"):
        files += [f"rank{r}_managed_weights.safetensors" for r in ranks]
    if opt("lora_plugin") not in (None, "disable"):
        nemo = opt("lora_ckpt_source") == "nemo"
        adapters = range(len(opt("lora_dir") or ()))
        files += [f"lora/{i}.nemo" if nemo else f"lora/{i}/adapter_config.json" for i in adapters]
    return files


def carry(source: Path, out_dir: Path) -> list[str]:
    """Copy into out_dir every file of the engine in `source` that trtllm-refit does not write: refit() (1.2.x
    commands/refit.py) writes config.json and each *.engine only, while the builder's Engine.save() also wrote the
    LoRA adapters the config points at (lora/...) and, for MIXED_PRECISION, quant_cfg.json; without them the
    refitted engine does not load. Records about a build (manifest, logs, validation) are not the engine's.
    Managed weights are weights trtllm-refit does not update: an engine holding them is not refitted (BuildFailed)."""
    carried = []
    for p in sorted(source.rglob("*")):
        rel = p.relative_to(source).as_posix()
        if not p.is_file() or rel in NOT_OUTPUTS or (out_dir / rel).exists():
            continue
        if rel.endswith("_managed_weights.safetensors"):
            raise BuildFailed(f"{source / rel}: managed weights are weights trtllm-refit does not update; "
                              "this engine is rebuilt instead")
        (out_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(p, out_dir / rel)
        carried.append(rel)
    return carried


class TrtllmRunner(Runner):
    name = "trtllm"

    def gpus(self, engine: Engine, step: Step) -> int:
        if step == "convert":
            return 1 if needs_calibration(engine.model.quant) else 0  # ModelOpt calibrates on a GPU
        if step == "validate":
            return engine.world_size  # mpirun -n world_size: one GPU per rank
        return min(engine.world_size, engine.model.max_workers or engine.world_size)  # build, refit: --workers

    def blocked(self, engine: Engine, host: Host, step: Step = "build") -> str | None:
        """Validation: the runtime puts rank r on GPU r % gpus_per_node (ModelRunner.from_engine), one GPU per rank,
        unshared."""
        blocked = super().blocked(engine, host, step)
        have = len(host.gpus_of(engine.arch, engine.model.gpu_name))
        if step != "validate" or blocked or have >= engine.world_size:
            return blocked
        return (f"validation needs {engine.world_size} {engine.arch} GPUs (one per rank); this host has {have}: "
                f"needs an {engine.arch} host with {engine.world_size} GPUs")

    def convert(self, job: Job) -> None:
        e = job.engine
        run_worker("buildlib.backends.trtllm_convert", {
            "checkpoint": str(job.checkpoint), "out_dir": str(job.out_dir), "dtype": e.model.dtype,
            "tp": e.tp, "pp": e.pp, "quantization": e.model.quant, "model_class": e.model.model_class,
        }, job.log, f"convert:{e.convert_id}", env=job.visible_env(), cwd=job.work_dir)

    def build_cache(self, engine: Engine, gpus: tuple[Gpu, ...], work_dir: Path) -> tuple[str, Path] | None:
        """TensorRT's timing cache, per (GPU name, TensorRT version): it speeds rebuilds and is not part of the key."""
        gpu = gpus[0].name if gpus else "none"
        trt = TrtllmRecipe().toolchain().get("tensorrt") or "unknown"
        name = f"{_slug(gpu)}-trt{_slug(trt)}.cache"
        return f"timing/{name}", work_dir / TIMING_CACHE / name

    def _timing_cache(self, job: Job) -> Path:
        got = self.build_cache(job.engine, job.gpus, job.work_dir)
        assert got is not None
        return got[1]

    def build(self, job: Job) -> None:
        e = job.engine
        if not job.gpus:
            raise BuildFailed(f"build:{e.id} needs at least one {e.arch} GPU; none was given")
        assert job.converted is not None
        cache = self._timing_cache(job)
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
        require_files(f"build:{e.id}", job.out_dir, outputs(e))

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
        if any(source.glob("*_managed_weights.safetensors")):
            carry(source, job.out_dir)  # raises: this engine is not refitted
        run_logged(["trtllm-refit", "--engine_dir", str(source), "--checkpoint_dir", str(job.converted),
                    "--output_dir", str(job.out_dir), "--log_level", "info"],
                   job.log, f"refit:{e.id}", env=job.visible_env(), cwd=job.work_dir)
        carried = carry(source, job.out_dir)
        if carried:
            with open(job.log, "a") as log:
                log.write(f"refit: carried from {source} what trtllm-refit does not write: {', '.join(carried)}\n")
        require_files(f"refit:{e.id}", job.out_dir, outputs(e))

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
            "gpu": job.gpus[0].name if job.gpus else None,
        }, job.log, f"validate:{e.id}", env=job.visible_env(), cwd=job.work_dir, prefix=argv_prefix)

