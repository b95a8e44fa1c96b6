"""Fleet refresh over a local Ray cluster (issue #12): makespan against its lower bound, driver overhead.

    .venv/bin/python bench/ray_bench.py [--engines 100] [--gpus 4] [--seconds 1.0] [--out bench/results/ray.json]

Two nodes on loopback, started with the node command (python -m buildlib.fleet.ray_node): one with --gpus
stand-in H100s (sm_90), one with --gpus stand-in A100s (sm_80), each declaring 2 x --gpus logical CPUs (a
Ray task takes one CPU by default; a GPU box has many more CPUs than GPUs, this 2-core host does not).
The fleet: engines/2 models, each for sm80 and sm90, tp1, no validation; every stand-in build sleeps
--seconds (simulated GPU work). The driver runs `BUILDLIB_RAY=<head> doit -n <2 x gpus> -P thread`
with no GPU of its own.

Lower bound: for each arch, the build seconds its engines' manifests record, summed, over that arch's
GPUs; the makespan can be no shorter than the largest. Driver overhead per engine: the driver's CPU
seconds (user + system, its children included) over the engines.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.conftest import H100, LOADER_PYPROJECT, write_hf_checkpoint  # noqa: E402
from tests.raycluster import start_node, stop  # noqa: E402
from tests.standins import standin_env  # noqa: E402

A100 = {"name": "NVIDIA A100-SXM4-80GB", "compute_cap": "8.0", "memory_total_mib": 81920, "memory_used_mib": 0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engines", type=int, default=100)
    ap.add_argument("--gpus", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--out", default=str(REPO / "bench/results/ray.json"))
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="raybench-"))
    temp = tempfile.mkdtemp(prefix="rb-", dir="/tmp")
    port = 30000 + os.getpid() % 20000
    base = {"STANDIN_TRTLLM_SLEEP": str(args.seconds)}
    try:
        root = work / "repo"
        models = args.engines // 2
        lines = ["defaults: {backend: trtllm, archs: [sm80, sm90], validate: false, build: {max_batch_size: 8}}",
                 "models:"]
        for i in range(models):
            write_hf_checkpoint(root / f"ckpt/m{i}", shards=1, seed=i)
            lines.append(f"  - {{name: m{i}, checkpoint: ckpt/m{i}}}")
        (root / "models.yaml").write_text("\n".join(lines) + "\n")
        (root / "pyproject.toml").write_text(LOADER_PYPROJECT)
        cpus = ("--num-cpus", str(2 * args.gpus))  # logical: each Ray task takes one CPU, builds wait on GPUs only
        start_node({**standin_env(work / "s90", gpus=[H100] * args.gpus), **base}, temp, "--head", "--port", str(port),
                   "--temp-dir", temp, "--include-dashboard=false", *cpus)
        start_node({**standin_env(work / "s80", gpus=[A100] * args.gpus), **base}, temp, "--address",
                   f"127.0.0.1:{port}", *cpus)
        driver = {**standin_env(work / "drv", gpus=[]), "BUILDLIB_RAY": f"127.0.0.1:{port}"}
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.monotonic()
        r = subprocess.run([sys.executable, "-m", "doit", "-n", str(2 * args.gpus), "-P", "thread"], cwd=root,
                           env=driver, capture_output=True, text=True, timeout=3600)
        makespan = time.monotonic() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if r.returncode != 0:
            raise SystemExit(r.stdout[-3000:] + r.stderr[-3000:])
        per_arch: dict[str, float] = {}
        built = 0
        for m in (root / "engines").glob("*/*/*/manifest.json"):
            data = json.loads(m.read_text())
            arch = data["fields"]["target"]["arch"]
            per_arch[arch] = per_arch.get(arch, 0.0) + data["built"]["seconds"]
            built += 1
        lower = max(v / args.gpus for v in per_arch.values())
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        result = {"engines": built, "gpus_per_arch": args.gpus, "build_seconds_each": args.seconds,
                  "makespan_s": round(makespan, 2), "lower_bound_s": round(lower, 2),
                  "makespan_over_lower_bound": round(makespan / lower, 3),
                  "driver_cpu_s": round(cpu, 2), "driver_cpu_s_per_engine": round(cpu / max(built, 1), 4),
                  "driver_wall_overhead_s_per_engine": round((makespan - lower) / max(built, 1), 4)}
    finally:
        stop(temp)
        shutil.rmtree(temp, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
