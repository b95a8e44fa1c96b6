"""A serving node's GPUs as `enginebuild fetch` needs them: product name, arch, memory, and whether MIG splits one.

Read through NVML (`nvidia-ml-py`, the `pynvml` module) where it is installed and the driver answers, else through
`nvidia-smi --query-gpu` (which is NVML too, in a subprocess: ~50 ms more, and no Python dependency), else none: a
node without a driver is a CPU node. A GPU in MIG mode is listed but is not a whole GPU: an engine built for a
whole GPU's memory and SMs is not placed on its instances. CUDA_VISIBLE_DEVICES, when set to indices, narrows the
list as CUDA would for the serving process; set to MIG instances (`MIG-...`), every GPU counts as split.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections import Counter
from dataclasses import dataclass

from .gpu import arch_of, visible_indices
from .isa import host_isa

SMI_QUERY = "index,name,compute_cap,memory.total,mig.mode.current"


@dataclass(frozen=True)
class NodeGpu:
    index: int
    name: str
    arch: str
    memory_mib: int
    mig: bool  # MIG mode on: only GPU instances, no whole GPU


@dataclass(frozen=True)
class Node:
    gpus: tuple[NodeGpu, ...]
    cpu_isa: str
    source: str  # NVML, nvidia-smi, or "no NVIDIA driver"

    def of(self, arch: str, name: str | None = None, *, mig: bool = False) -> list[NodeGpu]:
        """The GPUs of an arch (and of one product name when given): the whole ones, or with `mig` the MIG-split."""
        return [g for g in self.gpus if g.arch == arch and g.mig == mig and (name is None or g.name == name)]

    def describe(self) -> str:
        """`2 x NVIDIA H100 80GB HBM3 (sm90)`, `1 x NVIDIA A100-SXM4-80GB (sm80, MIG mode)`, `no GPU`."""
        if not self.gpus:
            return "no GPU"
        counts = Counter((g.name, g.arch, g.mig) for g in self.gpus)
        return " + ".join(f"{n} x {name} ({arch}{', MIG mode' if mig else ''})"
                          for (name, arch, mig), n in counts.items())


def _visible(gpus: list[NodeGpu]) -> list[NodeGpu]:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return gpus
    ids = [v.strip() for v in visible.split(",") if v.strip()]
    if ids and all(v.startswith("MIG-") for v in ids):
        return [NodeGpu(g.index, g.name, g.arch, g.memory_mib, True) for g in gpus]
    keep = visible_indices()
    return gpus if keep is None else [g for g in gpus if g.index in keep]


def _nvml() -> list[NodeGpu] | None:
    """The GPUs NVML lists, or None where pynvml is not installed or the driver does not answer."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return None
    try:
        out = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(h)
            major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(h)
            try:
                mig = pynvml.nvmlDeviceGetMigMode(h)[0] == pynvml.NVML_DEVICE_MIG_ENABLE
            except pynvml.NVMLError:  # NotSupported: a GPU without MIG
                mig = False
            mem = pynvml.nvmlDeviceGetMemoryInfo(h).total >> 20
            out.append(NodeGpu(i, name.decode() if isinstance(name, bytes) else name, f"sm{major}{minor}", mem, mig))
        return out
    finally:
        pynvml.nvmlShutdown()


def _smi() -> list[NodeGpu] | None:
    """The GPUs nvidia-smi lists; [] when it says there are none; None without nvidia-smi."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        r = subprocess.run([exe, f"--query-gpu={SMI_QUERY}", "--format=csv,noheader,nounits"], capture_output=True,
                           text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if r.returncode != 0:
        return []  # "No devices were found"
    out = []
    for line in r.stdout.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 5:
            continue
        mem = parts[3].split()[0] if parts[3] else ""
        out.append(NodeGpu(int(parts[0]), parts[1], arch_of(parts[2]), int(mem) if mem.isdigit() else 0,
                           parts[4].lower() == "enabled"))
    return out


def read_node() -> Node:
    """This node, now."""
    gpus = _nvml()
    source = "NVML"
    if gpus is None:
        gpus, source = _smi(), "nvidia-smi"
    if gpus is None:
        gpus, source = [], "no NVIDIA driver"
    return Node(tuple(_visible(gpus)), host_isa(), source)
