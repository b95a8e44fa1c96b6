"""The host CPU's ISA tier as AOTInductor's C++ codegen would target it, from /proc/cpuinfo (stdlib only)."""

from __future__ import annotations

import os
from functools import lru_cache

# Tier -> the -march baseline the aoti worker pins (TORCHINDUCTOR_CPP_MARCH) so that an artifact runs on
# every host of its tier; inductor's own default, -march=native, ties it to the exact CPU model that built it.
MARCH = {
    "x86_64": "x86-64",
    "aarch64": "armv8-a",
    "x86_64-sse4": "x86-64-v2",
    "x86_64-avx2": "x86-64-v3",
    "aarch64-neon": "armv8-a",
    "aarch64-sve128": "armv8-a+sve+bf16",
    "aarch64-sve256": "armv8-a+sve+bf16",
}
AVX512_BASE = ("avx512f", "avx512bw", "avx512dq", "avx512vl")  # inductor's -mavx512{f,dq,vl,bw}


def _cpu_flags() -> set[str]:
    """The `flags` (x86) or `Features` (arm) words of the first CPU in /proc/cpuinfo."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return set(value.split())
    except OSError:
        pass
    return set()


def _sve_bits() -> int:
    """SVE vector length for new processes (bytes in procfs); torch.cpu's sve_max_length is the same prctl."""
    try:
        with open("/proc/sys/abi/sve_default_vector_length") as f:
            return int(f.read().split()[0]) * 8
    except (OSError, ValueError, IndexError):
        return 0


def x86_tier(flags: set[str], aten_cpu_capability: str | None = None) -> str:
    """Mirror torch/_inductor/cpu_vec_isa.py (torch 2.13) pick_vec_isa() on x86_64.

    Inductor walks [amx, avx512_vnni, avx512, avx2] and takes the first the CPU has (cpuinfo's
    amx_tile, avx512_vnni, avx512_f, avx2) and the compiler can build; ATEN_CPU_CAPABILITY=avx2 or
    =default caps it. The avx512 tiers build with -mavx512f -mavx512dq -mavx512vl -mavx512bw, so all
    four are required here (inductor checks only avx512_f, differing only on Xeon Phi). Extra flags
    that change the build are named too: -mavx512bf16 (avx512_bf16) and -mamx-fp16 (amx_fp16).
    Below avx2 inductor emits no explicit SIMD; sse4 names the -march=x86-64-v2 baseline then.
    """
    tier = ""
    if aten_cpu_capability != "default":
        if all(f in flags for f in AVX512_BASE) and aten_cpu_capability != "avx2":
            tier = "avx512"
            if "avx512_vnni" in flags:
                tier = "amx" if "amx_tile" in flags else "avx512vnni"
            if "avx512_bf16" in flags:
                tier += "bf16"
            if tier.startswith("amx") and "amx_fp16" in flags:
                tier += "fp16"
        elif "avx2" in flags:
            tier = "avx2"
    if not tier and {"sse4_2", "popcnt", "ssse3"} <= flags:
        tier = "sse4"
    return f"x86_64-{tier}" if tier else "x86_64"


def aarch64_tier(features: set[str], sve_bits: int) -> str:
    """Inductor: SVE (or SVE2) with BF16 -> VecSVE(128) if the vector length is 128 bits, else VecSVE(256);
    otherwise NEON. The SVE tiers compile with -msve-vector-bits=N, so 128 and 256 are distinct."""
    if ("sve" in features or "sve2" in features) and "bf16" in features:
        return "aarch64-sve128" if sve_bits == 128 else "aarch64-sve256"
    return "aarch64-neon"


def march_for(isa: str) -> str:
    """The portable -march baseline for an ISA tier (avx512 and amx tiers: x86-64-v4) or a bare machine."""
    return MARCH.get(isa, "x86-64-v4" if isa.startswith("x86_64-") else "native")


@lru_cache(maxsize=1)
def host_isa() -> str:
    """e.g. x86_64-avx2, x86_64-avx512vnnibf16, x86_64-amxbf16, aarch64-sve256, aarch64-neon.

    Any other machine gives its uname machine (e.g. ppc64le), lowercased.
    """
    machine = os.uname().machine.lower()
    if machine in ("x86_64", "amd64"):
        return x86_tier(_cpu_flags(), os.environ.get("ATEN_CPU_CAPABILITY"))
    if machine in ("aarch64", "arm64"):
        return aarch64_tier(_cpu_flags(), _sve_bits())
    return machine
