"""Host detection: the GPUs nvidia-smi reports (index, name, arch, memory) and the CPU's ISA."""

from __future__ import annotations

import os
import shutil
import subprocess
from contextlib import suppress
from dataclasses import dataclass
from functools import lru_cache

from ..core.errors import UserError
from .isa import host_isa

QUERY = "index,name,compute_cap,memory.total,memory.used"


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    arch: str  # e.g. sm90 from compute_cap 9.0
    memory_total_mib: int
    memory_used_mib: int


@dataclass(frozen=True)
class Host:
    """What this machine can build for: its GPUs and its CPU ISA (e.g. x86_64-avx512)."""

    gpus: tuple[Gpu, ...]
    cpu_isa: str

    @property
    def gpu_archs(self) -> frozenset[str]:
        return frozenset(g.arch for g in self.gpus)

    def gpus_of(self, arch: str, name: str | None = None) -> tuple[Gpu, ...]:
        """The GPUs of an arch (and product name). Memoized in the instance (frozen: written to __dict__): a plan
        asks it for every engine, 5,000 times for the blocked half of a 10,000-engine fleet."""
        memo = self.__dict__.setdefault("_gpus_of", {})
        got = memo.get((arch, name))
        if got is None:
            got = memo[arch, name] = tuple(g for g in self.gpus if g.arch == arch and (name is None or g.name == name))
        return got


# The one rule for GPU arch names in models.yaml: an SM arch NVIDIA ships (CUDA 13's list, Volta onwards), or a
# GPU product name, which stands for its arch (`h100` -> sm90): the engine dir and the key use the SM arch.
GPU_ARCHS = ("sm70", "sm75", "sm80", "sm86", "sm87", "sm89", "sm90", "sm100", "sm103", "sm110", "sm120", "sm121")
PRODUCT_ARCHS = {
    "v100": "sm70", "t4": "sm75", "a100": "sm80", "a800": "sm80", "a30": "sm80", "a10": "sm86", "a10g": "sm86",
    "a40": "sm86", "rtxa6000": "sm86", "orin": "sm87", "l4": "sm89", "l40": "sm89", "l40s": "sm89",
    "rtx4090": "sm89", "h100": "sm90", "h800": "sm90", "h200": "sm90", "h20": "sm90", "gh200": "sm90",
    "b100": "sm100", "b200": "sm100", "gb200": "sm100", "b300": "sm103", "gb300": "sm103", "thor": "sm110",
    "rtx5090": "sm120", "rtxpro6000": "sm120", "gb10": "sm121",
}


def gpu_arch(name: str) -> str | None:
    """The SM arch a models.yaml arch name means (`sm90`, `H100`, `h200` -> sm90), or None if it names none."""
    key = name.lower().replace("-", "").replace(" ", "")
    return key if key in GPU_ARCHS else PRODUCT_ARCHS.get(key)


def arch_of(compute_cap: str) -> str:
    """'9.0' -> 'sm90', '10.0' -> 'sm100', '8.6' -> 'sm86'."""
    major, _, minor = compute_cap.strip().partition(".")
    if not major.isdigit() or not (minor or "0").isdigit():
        raise ValueError(f"not a compute capability: {compute_cap!r}")
    return f"sm{int(major)}{int(minor or 0)}"


def _mib(text: str) -> int:
    value = text.strip().split()[0]
    return int(value) if value.isdigit() else 0


def parse_nvidia_smi(out: str) -> tuple[Gpu, ...]:
    gpus = []
    for line in out.splitlines():
        if not line.strip():
            continue
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 5:
            raise UserError(f"unexpected nvidia-smi output line: {line!r}")
        gpus.append(Gpu(int(parts[0]), parts[1], arch_of(parts[2]), _mib(parts[3]), _mib(parts[4])))
    return tuple(gpus)


class GpuProbe:
    """One `nvidia-smi --query-gpu` query, started when made and read on first use: a run that knows early that
    it will need the host's GPUs overlaps the query (tens of ms to seconds on a real host) with its other work.
    No nvidia-smi (or no devices) means no GPUs. CUDA_VISIBLE_DEVICES, when set to indices, restricts the list
    as CUDA would."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen[str] | None = None
        self._gpus: tuple[Gpu, ...] | None = ()
        exe = shutil.which("nvidia-smi")
        if exe is None:
            return
        with suppress(OSError):
            self._proc = subprocess.Popen([exe, f"--query-gpu={QUERY}", "--format=csv,noheader"],
                                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            self._gpus = None

    @property
    def running(self) -> bool:
        """Whether nvidia-smi is still at work (it takes a core meanwhile)."""
        return self._gpus is None and self._proc is not None and self._proc.poll() is None

    def gpus(self) -> tuple[Gpu, ...]:
        if self._gpus is None:
            self._gpus = self._read()
        return self._gpus

    def _read(self) -> tuple[Gpu, ...]:
        proc = self._proc
        assert proc is not None
        try:
            out, _ = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            return ()
        if proc.returncode != 0:
            return ()  # e.g. "No devices were found": a host without usable GPUs
        gpus = parse_nvidia_smi(out)
        keep = visible_indices()
        return gpus if keep is None else tuple(g for g in gpus if g.index in keep)


def visible_indices() -> set[int] | None:
    """The GPU indices CUDA_VISIBLE_DEVICES lets this process's children see, when it is set to indices (None when
    unset, or set to UUIDs or MIG instances, which are not indices)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return None
    ids = [v.strip() for v in visible.split(",") if v.strip()]
    return {int(v) for v in ids} if all(v.isdigit() for v in ids) else None


def detect_gpus() -> tuple[Gpu, ...]:
    """This host's GPUs, queried now."""
    return GpuProbe().gpus()


@lru_cache(maxsize=1)
def host_probe() -> GpuProbe:
    """This process's one probe for detect_host, started on the first call (Planner.start_host_probe makes
    that call early where it knows the host will be needed)."""
    return GpuProbe()


@lru_cache(maxsize=1)
def detect_host() -> Host:
    return Host(gpus=host_probe().gpus(), cpu_isa=host_isa())


@lru_cache(maxsize=1)
def driver_version() -> str | None:
    """The NVIDIA driver's version (nvidia-smi), or None where there is none: recorded with a validation."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        out = subprocess.run([smi, "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    first = out.stdout.strip().splitlines()[:1] if out.returncode == 0 else []
    return first[0].strip() if first else None
