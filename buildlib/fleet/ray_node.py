"""`python -m buildlib.fleet.ray_node [ray start options]`: start a Ray node that advertises its GPUs by arch.

Ray's own `accelerator_type` is too coarse for engines (an H100 PCIe and an H100 SXM are both "H100",
and a TensorRT engine is built for one compute capability), so the node command reads this node's
`nvidia-smi` and adds, to whatever `ray start` options it is given:

    --num-gpus N                           the node's GPUs
    --resources '{"sm_90": N, "gpu:NVIDIA-H200": N}'   one per arch, and one per exact GPU name

A build task for an sm90 engine asks for `{"sm_90": gpus}` (and the exact GPU name where the model
asks for one), so it can only land on a node of that arch. Options the user passes win: an explicit
`--num-gpus` is kept, and keys of an explicit `--resources` JSON override ours. Every other `ray start`
option passes through unchanged (`--address`, `--head`, `--node-ip-address`, `--temp-dir`, ...).
`--print` shows the `ray start` command instead of running it.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from ..core.errors import EXIT_USAGE, UserError
from ..host.gpu import Gpu, detect_gpus


def arch_resource(arch: str) -> str:
    """The Ray custom resource of a GPU arch: sm90 -> sm_90."""
    return f"sm_{arch[2:]}"


def gpu_name_resource(name: str) -> str:
    """The Ray custom resource of an exact GPU model: 'NVIDIA H100 80GB HBM3' -> gpu:NVIDIA-H100-80GB-HBM3."""
    return "gpu:" + re.sub(r"[^A-Za-z0-9.]+", "-", name).strip("-")


def node_resources(gpus: Sequence[Gpu]) -> dict[str, float]:
    """Custom resources of a node with these GPUs: a count per arch and per exact GPU name."""
    out: Counter[str] = Counter()
    for g in gpus:
        out[arch_resource(g.arch)] += 1
        out[gpu_name_resource(g.name)] += 1
    return {k: float(v) for k, v in sorted(out.items())}


def _option(args: list[str], name: str) -> tuple[str | None, list[str]]:
    """The value of `--name V` or `--name=V` in args, and args without it."""
    rest, value, i = [], None, 0
    while i < len(args):
        a = args[i]
        if a == name and i + 1 < len(args):
            value, i = args[i + 1], i + 2
            continue
        if a.startswith(name + "="):
            value = a.split("=", 1)[1]
        else:
            rest.append(a)
        i += 1
    return value, rest


def ray_start_argv(gpus: Sequence[Gpu], args: Sequence[str]) -> list[str]:
    """`ray start` with this node's GPU resources merged into the user's options."""
    rest = list(args)
    user_resources, rest = _option(rest, "--resources")
    num_gpus, rest = _option(rest, "--num-gpus")
    resources = node_resources(gpus)
    if user_resources:
        try:
            extra = json.loads(user_resources)
        except ValueError:
            extra = None
        if not isinstance(extra, dict):
            raise UserError(f"--resources {user_resources!r} must be a JSON object, e.g. '{{\"disk\": 4}}'")
        resources.update(extra)
    return ["ray", "start", "--num-gpus", num_gpus if num_gpus is not None else str(len(gpus)),
            "--resources", json.dumps(resources, sort_keys=True), *rest]


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    show = "--print" in args
    args = [a for a in args if a != "--print"]
    try:
        cmd = ray_start_argv(detect_gpus(), args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None
    if show:
        print(shlex.join(cmd))
        return
    exe = _ray_executable()
    if exe is None:
        print("error: the `ray` command is not installed in this environment: pip install 'enginebuild[ray]'",
              file=sys.stderr)
        raise SystemExit(EXIT_USAGE)
    os.execv(exe, [exe, *cmd[1:]])


def _ray_executable() -> str | None:
    """The `ray` of this Python's environment (a venv need not be activated), else the one on PATH."""
    beside = Path(sys.executable).parent / "ray"
    return str(beside) if os.access(beside, os.X_OK) else shutil.which("ray")


if __name__ == "__main__":
    main()
