"""What a speed was measured on (buildlib.core.perf's `device`), from inside the aoti worker: the GPU's name, SM
clocks (current and max: a throttled or power-capped GPU shows here) and driver; or the CPU's model, ISA tier and
the threads torch used."""

from __future__ import annotations

import platform
import shutil
import subprocess
from typing import Any

from ..host.isa import host_isa


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _smi(uuid: str) -> dict[str, Any]:
    smi = shutil.which("nvidia-smi")
    if smi is None or not uuid:
        return {}
    try:
        r = subprocess.run([smi, "-i", uuid, "--query-gpu=clocks.sm,clocks.max.sm,driver_version",
                            "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    parts = [p.strip() for p in r.stdout.strip().split(",")] if r.returncode == 0 else []
    if len(parts) != 3:
        return {}
    clocks = {k: int(v) for k, v in (("sm_mhz", parts[0]), ("max_sm_mhz", parts[1])) if v.isdigit()}
    return {"clocks": clocks, "driver": parts[2]}


def describe(device: str) -> dict[str, Any]:
    import torch

    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        uuid = str(getattr(props, "uuid", "") or "")
        uuid = uuid if not uuid or uuid.startswith("GPU-") else f"GPU-{uuid}"
        return {"kind": "cuda", "name": props.name, "torch": torch.__version__, **_smi(uuid)}
    return {"kind": "cpu", "name": _cpu_model(), "isa": host_isa(), "threads": torch.get_num_threads(),
            "torch": torch.__version__}
