"""Reliability harness (issue #11): SIGKILL at random instants, and concurrent runs, counted.

    .venv/bin/python bench/reliability.py [--trials 100] [--concurrent 10] [--out bench/results/reliability.json]

A project with two models (a tp1 and a tp2 engine, plus one more tp1) and a directory store, built
through the real `doit` CLI against the TensorRT-LLM stand-ins. Each trial changes something so that
work is needed, picked at random: new build options (build + validate), a new dtype (convert + build),
local engines removed (restore from the store), validation records removed (validate only); starts
`doit`, SIGKILLs it at a random instant within the time a full run takes, then counts:

- falsely fresh: an engine `doit plan` calls fresh whose dir does not verify (buildlib.report.verify) or whose
  manifest key is not the planned one (target 0);
- lost work: an engine fresh before the trial whose dir is gone or broken after the kill (target 0);
- leftover processes: builder/validator processes of the project alive after the kill (target 0);
- leftover files: temp dirs and temp files after the next run (target 0);
- failed recoveries: the next `doit` not exiting 0 with every engine fresh (target 0).

Concurrent: two runs at once (one serial, one -n 2 -P process) from nothing, counting engines built
more than once and runs that fail.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from buildlib.report.verify import verify_dir  # noqa: E402
from tests.conftest import H100, LOADER_PYPROJECT, built_engines, write_hf_checkpoint  # noqa: E402
from tests.standins import standin_env  # noqa: E402

MODELS = """\
store: store
defaults: {{backend: trtllm, dtype: {dtype}, archs: [sm90], build: {{max_batch_size: {mbs}, max_seq_len: 512}}}}
models:
  - {{name: a, checkpoint: ckpt/a, parallel: [{{tp: 1, pp: 1}}, {{tp: 2, pp: 1}}]}}
  - {{name: b, checkpoint: ckpt/b}}
"""
DTYPES = ("float16", "bfloat16", "float32")


def doit(root: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "doit", *args], cwd=root, env=env, capture_output=True, text=True,
                          timeout=600)


def plan(root: Path, env: dict[str, str]) -> dict[str, dict]:
    r = doit(root, env, "plan", "--json")
    if r.returncode != 0:
        raise RuntimeError(r.stderr)
    return {e["engine"]: e for e in json.loads(r.stdout)}


def project_procs(root: Path) -> list[int]:
    """Processes whose command line or cwd is inside the project (builders, validators, mpirun, doit)."""
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(f"/proc/{pid}/cwd")
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            continue
        if str(root) in cmd or cwd.startswith(str(root)):
            out.append(int(pid))
    return out


def leftovers(root: Path) -> list[str]:
    found = []
    for base in (root / "engines", root / ".buildlib", root / "store"):
        for p in base.rglob("*"):
            n = p.name
            if ".tmp-" in n or ".old-" in n or (n.startswith(".") and n.endswith(".tmp")) or n.startswith(".verify-"):
                found.append(str(p.relative_to(root)))
        if (base / ".incoming").exists():
            found += [str(p.relative_to(root)) for p in (base / ".incoming").iterdir()]
    return found


def good_engines(root: Path, states: dict[str, dict]) -> dict[str, str]:
    """Engines that plan calls fresh and whose dirs verify: {engine: key}."""
    return {e: s["key"] for e, s in states.items()
            if s["state"] == "fresh" and not verify_dir(root / "engines" / e)}


def kill_trials(work: Path, trials: int, rng: random.Random) -> dict:
    root = work / "kill"
    write_hf_checkpoint(root / "ckpt/a", shards=2, seed=1)
    write_hf_checkpoint(root / "ckpt/b", shards=1, seed=2)
    (root / "store").mkdir()
    (root / "pyproject.toml").write_text(LOADER_PYPROJECT)
    env = standin_env(work / "standins", gpus=[H100, H100])
    env["STANDIN_TRTLLM_LOG"] = str(work / "trtllm.log")
    mbs, dtype = 8, DTYPES[0]
    (root / "models.yaml").write_text(MODELS.format(mbs=mbs, dtype=dtype))
    t0 = time.monotonic()
    assert doit(root, env).returncode == 0
    full = time.monotonic() - t0
    counts = Counter(dict.fromkeys(("falsely fresh", "lost work (engine broken by the kill)", "leftover processes",
                                    "leftover files after the next run", "failed recoveries",
                                    "finished before the kill"), 0))
    modes = Counter()
    for _ in range(trials):
        mode = rng.choice(["build", "convert", "restore", "validate"])
        modes[mode] += 1
        if mode == "build":
            mbs += 1
        elif mode == "convert":
            dtype = rng.choice([d for d in DTYPES if d != dtype])
            mbs += 1
        elif mode == "restore":
            shutil.rmtree(root / "engines", ignore_errors=True)
        else:
            for v in (root / "engines").rglob("validation.json"):
                v.unlink()
        (root / "models.yaml").write_text(MODELS.format(mbs=mbs, dtype=dtype))
        before = good_engines(root, plan(root, env))
        proc = subprocess.Popen([sys.executable, "-m", "doit"], cwd=root, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        delay = rng.uniform(0, full * 1.2)
        try:
            proc.wait(timeout=delay)
            counts["finished before the kill"] += 1
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        deadline = time.monotonic() + 10
        while project_procs(root) and time.monotonic() < deadline:
            time.sleep(0.1)  # PDEATHSIG delivery and reaping take a moment
        counts["leftover processes"] += len(project_procs(root))
        for p in project_procs(root):
            os.kill(p, signal.SIGKILL)
        states = plan(root, env)
        for e, s in states.items():
            if s["state"] == "fresh" and verify_dir(root / "engines" / e):
                counts["falsely fresh"] += 1
        for e in before:
            d = root / "engines" / e
            if (d / "manifest.json").exists() and verify_dir(d):
                counts["lost work (engine broken by the kill)"] += 1
        r = doit(root, env)
        after = plan(root, env)
        if r.returncode != 0 or {s["state"] for s in after.values()} != {"fresh"}:
            counts["failed recoveries"] += 1
        counts["leftover files after the next run"] += len(leftovers(root))
    return {"trials": trials, "modes": dict(modes), "full_run_seconds": round(full, 2), **dict(counts),
            "builds": len(built_engines(env))}


def concurrent_trials(work: Path, n: int) -> dict:
    counts = Counter(dict.fromkeys(("failed runs", "engines built twice", "not fresh afterwards", "falsely fresh"), 0))
    for i in range(n):
        root = work / f"conc-{i}"
        for j, name in enumerate("abc"):
            write_hf_checkpoint(root / "ckpt" / name, seed=j)
        (root / "models.yaml").write_text(MODELS.replace("store: store\n", "").format(mbs=8, dtype="float16")
                                          + "  - {name: c, checkpoint: ckpt/c}\n")
        (root / "pyproject.toml").write_text(LOADER_PYPROJECT)
        env = standin_env(work / f"standins-{i}", gpus=[H100] * 2)
        env["STANDIN_TRTLLM_LOG"] = str(work / f"conc-{i}.log")
        runs = [subprocess.Popen([sys.executable, "-m", "doit", *a], cwd=root, env=env, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL) for a in ((), ("-n", "2", "-P", "process"))]
        codes = [p.wait(timeout=600) for p in runs]
        counts["failed runs"] += sum(c != 0 for c in codes)
        built = Counter(built_engines(env))
        counts["engines built twice"] += sum(v > 1 for v in built.values())
        states = plan(root, env)
        counts["not fresh afterwards"] += sum(s["state"] != "fresh" for s in states.values())
        counts["falsely fresh"] += sum(s["state"] == "fresh" and bool(verify_dir(root / "engines" / e))
                                       for e, s in states.items())
    return {"trials": n, **dict(counts)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=100)
    ap.add_argument("--concurrent", type=int, default=10)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", default=str(REPO / "bench/results/reliability.json"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="reliability-") as d:
        work = Path(d)
        t0 = time.monotonic()
        result = {"sigkill": kill_trials(work, args.trials, random.Random(args.seed)),
                  "concurrent": concurrent_trials(work, args.concurrent)}
        result["seconds"] = round(time.monotonic() - t0, 1)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
