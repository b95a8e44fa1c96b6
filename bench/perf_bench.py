"""Engines proven fast, on this host's CPU (#28): the shipped tiny Llama (aoti) through `doit` in fresh checkouts.

    python bench/perf_bench.py [--runs 3]

1. Speed: one checkout builds and validates the engine; its validation is then run again (validation.json removed,
   `doit` again). Both measurements' tokens/s (prefill, decode; median and p10/p90) and the speed-up over eager;
   their ratio is what a perf_gate must tolerate on a quiet machine.
2. Warm build caches: for each of --runs seeds, a fresh checkout builds the model with that seed (a new key, the
   same graph) against a store holding the Inductor cache pushed by an earlier build (warm), and another fresh
   checkout builds it against an empty store (cold), alternating which goes first. Build seconds from each
   manifest (`built.seconds`: the compile), plus the cache's fetch for the warm one (from its `build cache ...:
   fetched N MiB in S s` line). Each checkout is a fresh machine's as far as Inductor goes: its caches, precompiled
   headers included, live in the project's own dir. Goal: warm <= 0.5 x cold.
Writes bench/results/perf-cpu.json and prints Markdown.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from buildlib.host.isa import host_isa  # noqa: E402

ENGINE = f"tiny-llama/{host_isa()}/tp1-pp1"


def checkout(root: Path, seed: int) -> Path:
    root.mkdir(parents=True)
    text = (REPO / "models.yaml").read_text().replace("seed: 0", f"seed: {seed}").replace("archs: [cpu, sm90]",
                                                                                           "archs: [cpu]")
    (root / "models.yaml").write_text(text)
    (root / "pyproject.toml").write_text('[tool.doit]\nloader = "buildlib"\n')
    return root


def doit(root: Path, store: Path) -> dict[str, Any]:
    env = {**os.environ, "BUILDLIB_STORE": str(store)}
    r = subprocess.run([sys.executable, "-m", "doit"], cwd=root, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"doit failed in {root}:\n{r.stdout}\n{r.stderr}")
    edir = root / "engines" / ENGINE
    m = json.loads((edir / "manifest.json").read_text())
    v = json.loads((edir / "validation.json").read_text())
    cache = next((ln for ln in r.stdout.splitlines() if ln.startswith("build cache ")), "")
    fetch = re.search(r"fetched [0-9.]+ MiB in ([0-9.]+)s", cache)
    return {"build_s": m["built"]["seconds"] + (float(fetch.group(1)) if fetch else 0.0), "perf": v.get("perf"),
            "cache": cache}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="perf-bench-"))
    try:
        shared = work / "store"
        shared.mkdir()
        first = checkout(work / "first", 0)
        one = doit(first, shared)  # cold, and pushes its cache
        (first / "engines" / ENGINE / "validation.json").unlink()
        two = doit(first, shared)
        speed = {"first": one["perf"], "second": two["perf"],
                 "ratio": two["perf"]["tokens_per_s"] / one["perf"]["tokens_per_s"]}
        pairs = []
        for i in range(a.runs):
            seed = 100 + i
            empty = work / f"empty-{i}"
            empty.mkdir()
            order = [("warm", shared), ("cold", empty)] if i % 2 == 0 else [("cold", empty), ("warm", shared)]
            got = {name: doit(checkout(work / f"{name}-{i}", seed), store) for name, store in order}
            pairs.append({"seed": seed, **{k: v["build_s"] for k, v in got.items()},
                          "warm_cache": got["warm"]["cache"], "cold_cache": got["cold"]["cache"]})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    warm = statistics.median(p["warm"] for p in pairs)
    cold = statistics.median(p["cold"] for p in pairs)
    out = {"engine": ENGINE, "speed": speed, "caches": {"pairs": pairs, "warm_s": warm, "cold_s": cold,
                                                        "ratio": warm / cold}}
    (REPO / "bench/results/perf-cpu.json").write_text(json.dumps(out, indent=1) + "\n")
    for name in ("first", "second"):
        p = speed[name]
        pre, dec = p["prefill"], p["decode"]
        e = pre["engine"]
        print(f"| {name} validation | {e['tokens_per_s']:,.0f} (time p10-p90 {e['p10_s'] * 1e3:.2f}-"
              f"{e['p90_s'] * 1e3:.2f} ms) | {dec['engine']['tokens_per_s']:,.0f} | {pre['speedup']:.2f} | "
              f"{dec['speedup']:.2f} |")
    print(f"second / first: {speed['ratio']:.3f}")
    print(f"build with a warm Inductor cache from the store: {warm:.1f} s; cold: {cold:.1f} s; ratio {warm / cold:.2f}")


if __name__ == "__main__":
    main()
