"""Stand-ins for the GPU toolchain at the process boundary (trtllm-build, nvidia-smi, tensorrt_llm, tensorrt).

They mirror the interfaces of TensorRT-LLM 1.2.1 (pinning tensorrt~=10.14.1) and do fake work with
deterministic bytes, so the TensorRT-LLM path can be tested on a machine with no GPU. `standin_env`
materializes a copy with the versions a test wants and returns the environment that puts it first.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path

HERE = Path(__file__).resolve().parent
TRTLLM_VERSION = "1.2.1"
# tensorrt_llm 1.2.1 requires tensorrt~=10.14.1; the newest 10.14 release is 10.14.1.48 (tensorrt.__version__).
TENSORRT_VERSION = "10.14.1.48"
H100 = {"name": "NVIDIA H100 80GB HBM3", "compute_cap": "9.0", "memory_total_mib": 81559, "memory_used_mib": 0}


def _metadata(name: str, version: str, summary: str, requires: str = "") -> str:
    lines = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}", f"Summary: {summary}"]
    if requires:
        lines.append(f"Requires-Dist: {requires}")
    return "\n".join(lines) + "\n"


def standin_env(root: Path, *, trtllm_version: str = TRTLLM_VERSION, tensorrt_version: str = TENSORRT_VERSION,
                gpus: list[dict] | None = None, base_env: Mapping[str, str] | None = None,
                engine_builder: bool = True) -> dict[str, str]:
    """Copy the stand-ins under `root` at the given versions; return an env with root/bin on PATH, root/site on
    PYTHONPATH and STANDIN_GPUS set (default: one H100). `base_env` defaults to os.environ. engine_builder=False
    makes a release without the TensorRT engine workflow: no trtllm-build entry point (as after 1.2.x)."""
    root = Path(root)
    bin_dir, site = root / "bin", root / "site"
    for d in (bin_dir, site):
        if d.exists():
            shutil.rmtree(d)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.dist-info")
    shutil.copytree(HERE / "bin", bin_dir, ignore=ignore)
    shutil.copytree(HERE / "site", site, ignore=ignore)
    for exe in bin_dir.iterdir():
        exe.chmod(0o755)
    # The real nvidia-smi is a native binary (0.02 s on the lent H200). Run through `#!/usr/bin/env python3`
    # (a pyenv shim on these machines) the stand-in took 0.2 s, which a no-op benchmark would count against
    # buildlib's probe; this interpreter in isolated mode without site (stdlib only) starts in ~0.04 s.
    smi = bin_dir / "nvidia-smi"
    smi.write_text(f"#!{sys.executable} -IS\n" + smi.read_text().split("\n", 1)[1])

    (site / "tensorrt_llm" / "version.py").write_text(
        '"""Stand-in for tensorrt_llm/version.py (written by standin_env)."""\n\n'
        f"__version__ = {trtllm_version!r}\n")
    (site / "tensorrt" / "__init__.py").write_text(
        '"""Stand-in for the `tensorrt` Python package (written by standin_env)."""\n\n'
        f"__version__ = {tensorrt_version!r}\n")
    trtllm_info = site / f"tensorrt_llm-{trtllm_version}.dist-info"
    trtllm_info.mkdir()
    major_minor_patch = ".".join(tensorrt_version.split(".")[:3])
    (trtllm_info / "METADATA").write_text(_metadata("tensorrt_llm", trtllm_version, "Stand-in for TensorRT-LLM",
                                                    f"tensorrt~={major_minor_patch}"))
    scripts = ["trtllm-serve = tensorrt_llm.commands.serve:main"]
    if engine_builder:
        # setup.py console_scripts of 1.2.x: trtllm-build and trtllm-refit come with the engine workflow.
        scripts[:0] = ["trtllm-build = tensorrt_llm.commands.build:main",
                       "trtllm-refit = tensorrt_llm.commands.refit:main"]
    else:
        (bin_dir / "trtllm-build").unlink()
        (bin_dir / "trtllm-refit").unlink()
    (trtllm_info / "entry_points.txt").write_text("[console_scripts]\n" + "\n".join(scripts) + "\n")
    trt_info = site / f"tensorrt-{tensorrt_version}.dist-info"
    trt_info.mkdir()
    (trt_info / "METADATA").write_text(_metadata("tensorrt", tensorrt_version, "Stand-in for TensorRT"))

    env = dict(os.environ if base_env is None else base_env)
    env["PATH"] = os.pathsep.join(p for p in (str(bin_dir), env.get("PATH", "")) if p)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(site), env.get("PYTHONPATH", "")) if p)
    env["STANDIN_GPUS"] = json.dumps([H100] if gpus is None else gpus)
    return env
