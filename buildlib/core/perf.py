"""An engine's speed as validation measures it, and the regression gate over it (stdlib only: the aoti worker, the
TensorRT-LLM validator under mpirun and the planner share it).

A measurement times a call at the engine's envelope: warm-up calls first (allocator, autotuning caches, clocks
ramping), then repeated calls until both `repeats` calls and `budget_s` seconds are done, each one synchronized with
the device. It keeps the median (what the gate compares: robust to a stray slow call) and the p10/p90 spread (how
noisy the GPU or CPU was). Two shapes: a prefill at max_batch_size x max_input_len, and a decode-like step of one
token per sequence at max_batch_size. tokens/s is batch x tokens per call / the median.

The record (validation.json `perf`, the signed validation record, `doit plan --json`):

    {"device": {...}, "tokens_per_s": <prefill tokens/s of the engine: the headline the gate compares>,
     "prefill": {"shape": [b, n], "engine": STATS, "eager": STATS, "speedup": eager / engine median},
     "decode": {...}}                         # "eager" and "speedup" where a baseline runs (aoti)
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

WARMUP = 3
REPEATS = 10
BUDGET_S = 1.0


def timed(call: Callable[[], object], sync: Callable[[], None], warmup: int = WARMUP, repeats: int = REPEATS,
          budget_s: float = BUDGET_S) -> list[float]:
    """Seconds of each measured call (after `warmup` untimed ones); at least `repeats`, and more while the total
    stays under `budget_s` (at most 10 x repeats)."""
    for _ in range(warmup):
        call()
    sync()
    out: list[float] = []
    start = time.perf_counter()
    while len(out) < repeats or (time.perf_counter() - start < budget_s and len(out) < 10 * repeats):
        t0 = time.perf_counter()
        call()
        sync()
        out.append(time.perf_counter() - t0)
    return out


def stats(times: list[float], tokens: int) -> dict[str, Any]:
    """Median and p10/p90 of call times, and tokens/s at the median (`tokens` per call)."""
    q = statistics.quantiles(times, n=10, method="inclusive") if len(times) > 1 else [times[0]] * 9
    med = statistics.median(times)
    return {"median_s": med, "p10_s": q[0], "p90_s": q[-1], "runs": len(times), "tokens_per_s": tokens / med}


def shape_record(shape: tuple[int, int], engine: list[float], eager: list[float] | None = None,
                 tokens: int | None = None) -> dict[str, Any]:
    """One shape's measurement; tokens per call default to batch x length."""
    n = tokens if tokens is not None else shape[0] * shape[1]
    rec: dict[str, Any] = {"shape": list(shape), "engine": stats(engine, n)}
    if eager:
        rec["eager"] = stats(eager, n)
        rec["speedup"] = rec["eager"]["median_s"] / rec["engine"]["median_s"]
    return rec


def record(device: dict[str, Any], prefill: dict[str, Any], decode: dict[str, Any]) -> dict[str, Any]:
    return {"device": device, "tokens_per_s": prefill["engine"]["tokens_per_s"], "prefill": prefill,
            "decode": decode}


def headline(perf: dict[str, Any] | None) -> float | None:
    """The tokens/s the gate compares, or None for a record without one."""
    v = perf.get("tokens_per_s") if isinstance(perf, dict) else None
    return float(v) if isinstance(v, int | float) and v > 0 else None


def device_name(perf: dict[str, Any] | None) -> str | None:
    d = perf.get("device") if isinstance(perf, dict) else None
    return str(d.get("name")) if isinstance(d, dict) and d.get("name") else None


def gate(before: dict[str, Any] | None, now: dict[str, Any], tolerance: float) -> dict[str, Any] | None:
    """The gate's verdict on a rebuilt engine (`now`) against the engine it replaced (`before`, measured on the same
    device model before the rebuild): None where there is nothing to compare (no earlier measurement, another
    device, no headline)."""
    b, a = headline(before), headline(now)
    if b is None or a is None or device_name(before) != device_name(now):
        return None
    ratio = a / b
    return {"before": b, "after": a, "ratio": ratio, "tolerance": tolerance, "regressed": ratio < tolerance,
            "device": device_name(now)}


def regression_reason(verdict: dict[str, Any]) -> str:
    """`tokens/s 12,400 -> 10,900, -12% (gate 0.95, NVIDIA H100 80GB HBM3)`: why an engine is shown `regressed`."""
    pct = (verdict["ratio"] - 1) * 100
    return (f"tokens/s {verdict['before']:,.0f} -> {verdict['after']:,.0f}, {pct:+.0f}% "
            f"(gate {verdict['tolerance']:g}, {verdict['device']})")
