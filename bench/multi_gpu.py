"""Proof on a multi-GPU host (issue 29), in one run: GPU slots, packing and per-GPU engine speed.

1. **Packing.** A fleet of more engines than GPUs, of different sizes (tiny Llamas of several seeds, widths and
   depths), built with `doit -n <GPUs + 2> -P process`. Reported: the makespan against its lower bound
   max(sum of build seconds / GPUs, longest build), and each build's GPU from its log line (`building ... on GPU i`)
   beside the one its manifest records. Meanwhile a sampler reads nvidia-smi's compute apps every 0.25 s and
   attributes each GPU process to the doit step that started it: a step's progress record (buildlib.host.progress)
   names its pid and the GPUs it was given, and a GPU process belongs to the step whose pid is its ancestor. A
   sample where one GPU serves two steps, or a step on a GPU it was not given, is a violation (none expected).
2. **Per-GPU speed.** The fleet is validated (also packed), then its first engine is validated again on each GPU in
   turn (CUDA_VISIBLE_DEVICES=i): prefill and decode tokens/s per GPU and their spread across the host's GPUs.
3. **Fetch among GPU counts.** One model built at every power-of-two GPU count up to the host's (TensorRT-LLM
   stand-ins, tests/standins: the lent machines have no TensorRT-LLM; the real nvidia-smi stays first on PATH),
   released to `canary`, then `enginebuild fetch --list` and a fetch on this host, and the same with one GPU visible.

Usage, from the repo root with buildlib and doit importable (`bash bench/gpu_perf.sh multi` installs them on a
lent machine):
    python bench/multi_gpu.py --out DIR [--engines N] [--fleet aoti|trtllm]
With no nvidia-smi on PATH it runs against stand-in GPUs (--standin-gpus, default 4) and a stand-in fleet: a dry
run of the script itself, whose timings mean nothing. Results: DIR/summary.json, DIR/summary.md and the raw logs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from buildlib.host.progress import running  # noqa: E402
from tests.standins import H100, standin_env  # noqa: E402

SIZES = ((64, 2), (128, 4), (256, 6), (128, 2), (64, 6), (256, 2))  # (hidden_size, num_hidden_layers), cycled
BUILD = "max_batch_size: 4, max_input_len: 64, max_seq_len: 128"


def smi(env: dict[str, str], *args: str) -> list[list[str]]:
    out = subprocess.run(["nvidia-smi", *args, "--format=csv,noheader,nounits"], env=env, capture_output=True,
                         text=True, check=False)
    return [[c.strip() for c in line.split(",")] for line in out.stdout.splitlines() if line.strip()]


def gpus_of(env: dict[str, str]) -> list[dict[str, Any]]:
    rows = smi(env, "--query-gpu=index,name,compute_cap,pci.bus_id,memory.total,driver_version")
    return [{"index": int(r[0]), "name": r[1], "compute_cap": r[2], "bus": r[3].upper(), "memory_total_mib": int(r[4]),
             "driver": r[5]} for r in rows]


def doit(project: Path, env: dict[str, str], log: Path, *args: str) -> tuple[int, float, str]:
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "doit", *args], cwd=project, env=env, capture_output=True, text=True,
                       check=False)
    wall = time.monotonic() - t0
    text = r.stdout + r.stderr
    with open(log, "a") as f:
        f.write(f"$ doit {' '.join(args)}  (rc {r.returncode}, {wall:.1f} s)\n{text}\n")
    return r.returncode, wall, text


def project(d: Path, backend: str, arch: str, models: list[str], extra: str = "") -> Path:
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    (d / "pyproject.toml").write_text('[tool.doit]\nloader = "buildlib"\n')
    (d / "models.yaml").write_text(
        f"defaults: {{backend: {backend}, dtype: float32, archs: [{arch}], build: {{{BUILD}}}{extra}}}\n"
        "models:\n" + "".join(f"  - {m}\n" for m in models))
    return d


def manifests(d: Path) -> dict[str, dict[str, Any]]:
    return {str(p.parent.relative_to(d / "engines")): json.loads(p.read_text())
            for p in sorted((d / "engines").glob("*/*/*/manifest.json"))}


def validation(engine_dir: Path) -> dict[str, Any]:
    p = engine_dir / "validation.json"
    return json.loads(p.read_text()) if p.exists() else {}


class Sampler(threading.Thread):
    """nvidia-smi's compute apps every 0.25 s, each attributed to the running doit step that owns the process."""

    def __init__(self, env: dict[str, str], gpus: list[dict[str, Any]], work_dir: Path) -> None:
        super().__init__(daemon=True)
        self.env, self.work_dir, self.stopped = env, work_dir, threading.Event()
        self.index = {g["bus"]: g["index"] for g in gpus}
        self.samples: list[dict[str, Any]] = []
        self.error: str | None = None

    @staticmethod
    def ancestors(pid: int) -> list[int]:
        chain = []
        while pid > 1 and len(chain) < 64:
            chain.append(pid)
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
            except OSError:
                break
            pid = int(stat.rsplit(")", 1)[1].split()[1])
        return chain

    def run(self) -> None:
        while not self.stopped.wait(0.25):
            r = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,gpu_bus_id,used_memory",
                                "--format=csv,noheader,nounits"], env=self.env, capture_output=True, text=True,
                               check=False)
            if r.returncode != 0:
                self.error = (r.stderr or r.stdout).strip().splitlines()[0] if (r.stderr or r.stdout).strip() \
                    else f"exit {r.returncode}"
                return
            steps, t = {r.pid: r for r in running(self.work_dir)}, time.time()
            for line in r.stdout.splitlines():
                cells = [c.strip() for c in line.split(",")]
                if len(cells) < 3 or not cells[0].isdigit():
                    continue
                pid = int(cells[0])
                owner = next((steps[a] for a in self.ancestors(pid) if a in steps), None)
                self.samples.append({"t": t, "pid": pid, "gpu": self.index.get(cells[1].upper()),
                                     "mib": cells[2], "task": owner.task if owner else None,
                                     "given": owner.gpus if owner else None})


def violations(samples: list[dict[str, Any]]) -> list[str]:
    by_time: dict[float, dict[int, set[str]]] = defaultdict(lambda: defaultdict(set))
    bad = []
    for s in samples:
        if s["task"] is None:
            continue
        by_time[s["t"]][s["gpu"]].add(s["task"])
        if s["gpu"] not in s["given"]:
            bad.append(f"{s['task']} (pid {s['pid']}) on GPU {s['gpu']}, given {s['given']}")
    bad += [f"GPU {g} used by {sorted(tasks)} at {t:.2f}" for t, per in by_time.items() for g, tasks in per.items()
            if len(tasks) > 1]
    return bad


def fleet_models(n: int) -> list[str]:
    out = []
    for i in range(n):
        h, layers = SIZES[i % len(SIZES)]
        out.append(f"{{name: m{i:02d}-h{h}-l{layers}, checkpoint: {{generate: tinyllama, seed: {i}, hidden_size: {h}, "
                   f"num_hidden_layers: {layers}, intermediate_size: {2 * h}}}}}")
    return out


def packing(work: Path, env: dict[str, str], gpus: list[dict[str, Any]], args: argparse.Namespace,
            out: Path) -> dict[str, Any]:
    arch = f"sm{gpus[0]['compute_cap'].replace('.', '')}"
    d = project(work / "fleet", args.fleet, arch, fleet_models(args.engines), ", validate: false")
    jobs = len(gpus) + 2
    sampler = Sampler(env, gpus, d / ".buildlib")
    sampler.start()
    rc, wall, text = doit(d, env, out / "fleet.log", "-n", str(jobs), "-P", "process")
    sampler.stopped.set()
    sampler.join()
    built = manifests(d)
    logged = {}
    for line in text.splitlines():
        if line.startswith("building ") and " on GPU " in line:
            logged[line.split()[1]] = [int(i) for i in line.rsplit(" on GPU ", 1)[1].split()[0].split(",")]
    builds = [{"engine": e, "seconds": m["built"]["seconds"], "gpu_manifest": m["built"].get("gpu_indices"),
               "gpu_log": logged.get(e), "finished": m["built"].get("at")} for e, m in built.items()]
    secs = [b["seconds"] for b in builds]
    bound = max(sum(secs) / len(gpus), max(secs)) if secs else None
    (out / "smi-samples.json").write_text(json.dumps(sampler.samples))
    return {"doit": f"doit -n {jobs} -P process", "rc": rc, "engines": len(builds), "gpus": len(gpus),
            "makespan_s": round(wall, 1), "sum_build_s": round(sum(secs), 1),
            "longest_build_s": max(secs, default=None),
            "lower_bound_s": round(bound, 1) if bound else None,
            "makespan_over_bound": round(wall / bound, 3) if bound else None, "builds": builds,
            "log_agrees_with_manifest": all(b["gpu_log"] == b["gpu_manifest"] for b in builds),
            "smi": {"samples": len(sampler.samples), "attributed": sum(1 for s in sampler.samples if s["task"]),
                    "error": sampler.error, "violations": violations(sampler.samples)},
            "project": d}


def per_gpu_speed(d: Path, env: dict[str, str], gpus: list[dict[str, Any]], out: Path) -> dict[str, Any]:
    (d / "models.yaml").write_text((d / "models.yaml").read_text().replace(", validate: false", ""))
    rc, wall, _ = doit(d, env, out / "validate.log", "-n", str(len(gpus) + 2), "-P", "process")
    engines = sorted(manifests(d))
    fleet = {e: (validation(d / "engines" / e).get("perf") or {}).get("tokens_per_s") for e in engines}
    first = engines[0]
    per_gpu = []
    for g in gpus:
        (d / "engines" / first / "validation.json").unlink(missing_ok=True)
        grc, _, _ = doit(d, {**env, "CUDA_VISIBLE_DEVICES": str(g["index"])}, out / "validate.log",
                         f"validate:{first}")
        perf = validation(d / "engines" / first).get("perf") or {}
        per_gpu.append({"gpu": g["index"], "name": g["name"], "rc": grc,
                        "prefill_tokens_per_s": perf.get("tokens_per_s"),
                        "decode_tokens_per_s": ((perf.get("decode") or {}).get("engine") or {}).get("tokens_per_s"),
                        "x_eager": (perf.get("prefill") or {}).get("speedup"),
                        "sm_clock": ((perf.get("device") or {}).get("clocks") or {}).get("sm_mhz"),
                        "validated_on": (perf.get("device") or {}).get("name")})
    spread = {}
    for k in ("prefill_tokens_per_s", "decode_tokens_per_s"):
        v = [p[k] for p in per_gpu if isinstance(p[k], int | float)]
        if v:
            spread[k] = {"median": statistics.median(v), "min_over_median": round(min(v) / statistics.median(v), 3),
                         "max_over_median": round(max(v) / statistics.median(v), 3)}
    return {"validate_rc": rc, "validate_makespan_s": round(wall, 1), "fleet_tokens_per_s": fleet, "engine": first,
            "per_gpu": per_gpu, "spread": spread}


def fetch_choice(work: Path, env: dict[str, str], gpus: list[dict[str, Any]], out: Path) -> dict[str, Any]:
    arch = f"sm{gpus[0]['compute_cap'].replace('.', '')}"
    counts = [n for n in (1, 2, 4, 8, 16) if n <= len(gpus)]
    parallel = ", ".join(f"{{tp: {n}, pp: 1}}" for n in counts)
    store = work / "store"
    shutil.rmtree(store, ignore_errors=True)
    store.mkdir(parents=True)
    d = project(work / "fetch", "trtllm", arch, [f"{{name: tiny, checkpoint: {{generate: tinyllama, seed: 7}}, "
                                                  f"parallel: [{parallel}]}}"])
    senv = {**env, "BUILDLIB_STORE": str(store)}
    rc, _, _ = doit(d, senv, out / "fetch.log", "-n", str(len(gpus) + 2), "-P", "process")
    rrc, _, _ = doit(d, senv, out / "fetch.log", "release", "canary")
    runs = {}
    node = work / "node"
    shutil.rmtree(node, ignore_errors=True)
    for label, extra, cmd in (("all GPUs, --list", {}, ["--list"]), ("all GPUs", {}, ["--dest", str(node / "all")]),
                              ("one GPU visible, --list", {"CUDA_VISIBLE_DEVICES": "0"}, ["--list"]),
                              ("one GPU visible", {"CUDA_VISIBLE_DEVICES": "0"}, ["--dest", str(node / "one")])):
        r = subprocess.run([sys.executable, "-m", "buildlib.cli.enginebuild", "fetch", "--store", str(store),
                            "--channel", "canary", "--model", "tiny", *cmd], env={**senv, **extra},
                           capture_output=True, text=True, check=False)
        runs[label] = {"rc": r.returncode, "output": (r.stdout + r.stderr).strip().splitlines()}
    chosen = {k: os.readlink(node / k / "current") if (node / k / "current").is_symlink() else None
              for k in ("all", "one")}
    with open(out / "fetch.log", "a") as f:
        f.write(json.dumps(runs, indent=1) + "\n")
    return {"counts": counts, "build_rc": rc, "release_rc": rrc, "runs": runs, "current": chosen,
            "engines": {e: m["key"] for e, m in manifests(d).items()}}


def num(x: Any) -> str:
    return f"{x:,.0f}" if isinstance(x, int | float) else str(x)


def markdown(s: dict[str, Any]) -> str:
    p, v, f = s["packing"], s["speed"], s["fetch"]
    lines = [f"# Multi-GPU proof, {s['date']}", "", f"Host: {s['host']}; {s['dry_run']}", "",
             f"## Packing: {p['engines']} engines on {p['gpus']} GPUs, `{p['doit']}` (rc {p['rc']})", "",
             f"makespan {p['makespan_s']} s; lower bound {p['lower_bound_s']} s = max(sum {p['sum_build_s']} s / "
             f"{p['gpus']}, longest {p['longest_build_s']} s); ratio {p['makespan_over_bound']}", "",
             "| engine | build s | GPU (log) | GPU (manifest) |", "|---|---|---|---|"]
    lines += [f"| {b['engine']} | {b['seconds']} | {b['gpu_log']} | {b['gpu_manifest']} |" for b in p["builds"]]
    smi_ = p["smi"]
    lines += ["", f"nvidia-smi samples: {smi_['samples']} GPU processes seen, {smi_['attributed']} attributed to a "
              f"step; violations: {len(smi_['violations'])}" + (f"; sampler: {smi_['error']}" if smi_["error"] else ""),
              "", f"## Per-GPU speed of {v['engine']} (fleet validated in {v['validate_makespan_s']} s, rc "
              f"{v['validate_rc']})", "", "| GPU | prefill tokens/s | decode tokens/s | x eager | SM MHz |",
              "|---|---|---|---|---|"]
    lines += [f"| {g['gpu']} {g['name']} | {num(g['prefill_tokens_per_s'])} | {num(g['decode_tokens_per_s'])} | "
              f"{g['x_eager']} | {g['sm_clock']} |" for g in v["per_gpu"]]
    lines += ["", f"spread: {json.dumps(v['spread'])}", "", f"## Fetch among GPU counts {f['counts']} "
              f"(build rc {f['build_rc']}, release rc {f['release_rc']})", ""]
    for label, r in f["runs"].items():
        lines += [f"`enginebuild fetch` ({label}), rc {r['rc']}:", "", "```", *r["output"], "```", ""]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--work", type=Path, default=Path("/tmp/multi-gpu"))
    ap.add_argument("--engines", type=int, help="fleet size (default: GPUs + half the GPUs, at least GPUs + 2)")
    ap.add_argument("--fleet", choices=("aoti", "trtllm"), help="default: aoti on real GPUs, trtllm on stand-ins")
    ap.add_argument("--standin-gpus", type=int, default=4)
    args = ap.parse_args()
    real = shutil.which("nvidia-smi") is not None
    args.out.mkdir(parents=True, exist_ok=True)
    for old in args.out.glob("*.log"):  # the logs are appended to as the run goes
        old.unlink()
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    base = dict(os.environ, BUILDLIB_GPU_LOCK_DIR=str(args.work / "gpu-locks"), PYTHONUNBUFFERED="1")
    base["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{base.get('PATH', '')}"
    gpus = gpus_of(base) if real else []
    env = standin_env(args.work / "standins", base_env=base, gpus=(
        [{"name": g["name"], "compute_cap": g["compute_cap"], "memory_total_mib": g["memory_total_mib"]} for g in gpus]
        or [H100] * args.standin_gpus))
    if real:  # the stand-in TensorRT-LLM, the real nvidia-smi
        (args.work / "standins" / "bin" / "nvidia-smi").unlink()
    else:
        gpus = gpus_of(env)
    if not gpus:
        print("multi_gpu: nvidia-smi lists no GPU", file=sys.stderr)
        return 2
    args.fleet = args.fleet or ("aoti" if real else "trtllm")
    args.engines = args.engines or max(len(gpus) + 2, len(gpus) * 3 // 2)
    summary: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "gpus": gpus,
        "host": f"{len(gpus)} x {gpus[0]['name']} (driver {gpus[0]['driver']}), {os.cpu_count()} CPUs",
        "dry_run": "real GPUs" if real else "DRY RUN on stand-in GPUs: timings and speeds mean nothing"}
    summary["packing"] = packing(args.work, env, gpus, args, args.out)
    summary["speed"] = per_gpu_speed(summary["packing"].pop("project"), env, gpus, args.out)
    summary["fetch"] = fetch_choice(args.work, env, gpus, args.out)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    (args.out / "summary.md").write_text(markdown(summary))
    print(markdown(summary))
    p = summary["packing"]
    ok = (p["rc"] == 0 and not p["smi"]["violations"] and p["log_agrees_with_manifest"]
          and (not real or p["smi"]["attributed"]) and summary["speed"]["validate_rc"] == 0
          and summary["fetch"]["release_rc"] == 0)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
