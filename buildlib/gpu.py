"""Host detection: the GPUs nvidia-smi reports (index, name, arch, memory) and the CPU's ISA."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from functools import lru_cache

from .errors import UserError
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
        return tuple(g for g in self.gpus if g.arch == arch and (name is None or g.name == name))


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


def detect_gpus() -> tuple[Gpu, ...]:
    """GPUs from `nvidia-smi --query-gpu=...`; no nvidia-smi (or no devices) means no GPUs.

    CUDA_VISIBLE_DEVICES, when set to indices, restricts the list as CUDA would.
    """
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return ()
    try:
        proc = subprocess.run([exe, f"--query-gpu={QUERY}", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return ()
    if proc.returncode != 0:
        return ()  # e.g. "No devices were found": a host without usable GPUs
    gpus = parse_nvidia_smi(proc.stdout)
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and all(v.strip().isdigit() for v in visible.split(",") if v.strip()):
        keep = [int(v) for v in visible.split(",") if v.strip()]
        gpus = tuple(g for g in gpus if g.index in keep)
    return gpus


@lru_cache(maxsize=1)
def detect_host() -> Host:
    return Host(gpus=detect_gpus(), cpu_isa=host_isa())
