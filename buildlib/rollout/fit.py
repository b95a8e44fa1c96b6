"""Which engine of a release a node runs, with a reason for every engine, chosen or not.

An engine fits a node when the node has tp x pp whole GPUs of its arch (of its exact product name, where the model
asks for one: `gpu_name`), or, for an engine built for a CPU ISA (aoti on a CPU host), when the node's CPU is of
that ISA tier. Among the engines that fit, the node takes (in this order):

1. an engine for the exact GPU before one for the arch: it was built and tuned for this very product;
2. a GPU engine before a CPU engine;
3. the most GPUs (largest tp x pp): a serving node is given to one model, and more GPUs is more KV-cache memory
   and more throughput per replica;
4. tensor parallelism before pipeline parallelism at equal GPU count (tp2-pp1 over tp1-pp2): lower latency on one
   NVLink node.

`--tp/--pp` pin one configuration; the same rules pick among archs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..core.model import GPU_ARCH_RE
from ..host.node import Node


@dataclass(frozen=True)
class Fit:
    engine: dict[str, Any]
    ok: bool
    why: str  # fits: how (`sm90 tp2 (exact GPU ..., 2 of 2 GPUs)`); else why not
    rank: tuple[int, int, int, int] = (0, 0, 0, 0)


def label(e: dict[str, Any]) -> str:
    """`tp2`, `tp1-pp2`."""
    return f"tp{e['tp']}" + (f"-pp{e['pp']}" if e["pp"] != 1 else "")


def is_gpu(e: dict[str, Any]) -> bool:
    return bool(GPU_ARCH_RE.fullmatch(e["arch"]))


def judge(e: dict[str, Any], node: Node) -> Fit:
    """Whether engine `e` (a release record's engine) fits `node`, and why (not)."""
    arch, n, name = e["arch"], e["tp"] * e["pp"], e.get("gpu_name")
    what = f"{arch} {label(e)}"
    if not is_gpu(e):
        if arch == node.cpu_isa:
            return Fit(e, True, f"{what} (CPU {arch}, this node's ISA)", (0, 0, 0, 0))
        return Fit(e, False, f"{what}: built for CPU {arch}; this node's CPU is {node.cpu_isa}")
    whole = node.of(arch, name)
    if len(whole) >= n:
        how = f"exact GPU {name}" if name else f"arch {arch}, {whole[0].name}"
        return Fit(e, True, f"{what} ({how}, {n} of {len(whole)} GPUs)", (1 if name else 0, 1, n, e["tp"]))
    need = f"{n} whole {arch} GPU{'s' if n > 1 else ''}" + (f" ({name})" if name else "")
    if node.of(arch, name, mig=True):
        return Fit(e, False, f"{what}: needs {need}; this node's are in MIG mode ({node.describe()})")
    return Fit(e, False, f"{what}: needs {need}; this node has {node.describe()}")


def choose(engines: tuple[dict[str, Any], ...], node: Node, tp: int | None = None,
           pp: int | None = None) -> tuple[Fit | None, list[Fit]]:
    """(the engine to run or None, every engine judged in the release's order); `tp`/`pp` pin a configuration."""
    fits = []
    for e in engines:
        f = judge(e, node)
        pinned = [f"tp{tp}" if tp is not None and e["tp"] != tp else "", f"pp{pp}" if pp is not None and e["pp"] != pp
                  else ""]
        if f.ok and any(pinned):
            f = Fit(e, False, f"{f.why.split(' (')[0]}: not the pinned {' '.join(p for p in pinned if p)}")
        fits.append(f)
    ok = [f for f in fits if f.ok]
    return (max(ok, key=lambda f: f.rank) if ok else None), fits


def offer(engines: tuple[dict[str, Any], ...]) -> str:
    """What a release has, by arch: `sm80 (tp1, tp2) and sm90 NVIDIA H100 80GB HBM3 (tp1)`."""
    groups: dict[str, list[str]] = {}
    for e in engines:
        where = f"{e['arch']} {e['gpu_name']}" if e.get("gpu_name") else e["arch"]
        groups.setdefault(where, []).append(label(e))
    parts = [f"{where} ({', '.join(sorted(set(ls), key=ls.index))})" for where, ls in groups.items()]
    return " and ".join([", ".join(parts[:-1]), parts[-1]]) if len(parts) > 1 else "".join(parts)


def nothing_fits(channel: str, model: str, engines: tuple[dict[str, Any], ...], node: Node,
                 tp: int | None = None, pp: int | None = None) -> str:
    """The one line a node that cannot be served is told."""
    pin = " ".join(p for p in (f"tp{tp}" if tp else "", f"pp{pp}" if pp else "") if p)
    cpu = any(not is_gpu(e) for e in engines) or not node.gpus
    return (f"channel {channel} has {model} for {offer(engines)}" + (f" (pinned: {pin})" if pin else "")
            + f"; this node has {node.describe()}" + (f" (CPU {node.cpu_isa})" if cpu else ""))
