"""A no-op `doit` of two checkouts of buildlib on the same fleets, measured interleaved (A, B, A, B, ...).

    .venv/bin/python bench/noop_compare.py OLD_PYTHON NEW_PYTHON [--sizes 1000,10000] [--blocked 10000] [--runs 7]

Each interpreter is a venv with its own buildlib installed (e.g. a clone of the previous commit, `pip install -e
.[test]`). The fleets are bench/fleet_bench.py's (trtllm through the stand-ins, sparse checkpoint shards, every
engine written fresh by NEW's planner); each checkout gets its own copy of a fleet (its parse cache and stamps are
its own), warmed by two runs, and the first engine states of each are checked the same (every engine fresh, or
blocked in a half-blocked fleet, in both: the keys did not change). Then every timed round runs OLD and NEW once
each, in alternating order, so a slow spell of the VM falls on both. Writes bench/results/noop-compare.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO))

from fleet_bench import BUILDABLE, HALF_BLOCKED, MiB, make_fleet, standins_env, timed  # noqa: E402


def states(python: str, root: Path, env: dict[str, str]) -> dict[str, str]:
    r = subprocess.run([python, "-m", "doit", "plan", "--json"], cwd=root, env=env, capture_output=True, text=True,
                       check=True)
    return {e["engine"]: (e["state"], e["key"]) for e in json.loads(r.stdout)}


def compare(old: str, new: str, out: Path, engines: int, archs: list[str], runs: int) -> dict[str, object]:
    models = engines // (len(archs) * 5)
    base = out / f"{'half-blocked' if archs == HALF_BLOCKED else 'fleet'}{engines}"
    shape = make_fleet(base / "new", models, 8, max(1, int(16 * MiB * 100 / max(models, 100))), archs, 5)
    env = standins_env(base)
    subprocess.run([new, str(REPO / "bench/fleet_bench.py"), "--materialize", str(base / "new")], env=env,
                   check=True)
    if (base / "old").exists():
        shutil.rmtree(base / "old")
    subprocess.run(["cp", "-a", "--sparse=always", str(base / "new"), str(base / "old")], check=True)
    shutil.rmtree(base / "old" / ".buildlib", ignore_errors=True)  # its own stamps and parse cache
    roots = {"old": (old, base / "old"), "new": (new, base / "new")}
    for py, root in roots.values():
        for _ in range(2):
            timed([py, "-m", "doit"], root, env)
    got = {name: states(py, root, env) for name, (py, root) in roots.items()}
    assert got["old"] == got["new"], "the two checkouts disagree on a state or key"
    counts = {s: [st for st, _ in got["new"].values()].count(s) for s in ("fresh", "blocked")}
    assert counts["fresh"] + counts["blocked"] == shape["engines"], counts
    walls: dict[str, list[float]] = {"old": [], "new": []}
    for i in range(runs):
        for name in (("old", "new") if i % 2 == 0 else ("new", "old")):
            py, root = roots[name]
            walls[name].append(timed([py, "-m", "doit"], root, env)[0])
    med = {k: statistics.median(v) for k, v in walls.items()}
    return {"engines": shape["engines"], "blocked": shape["blocked"], "states": counts, "walls": walls,
            "median": med, "new_over_old": med["new"] / med["old"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("--sizes", default="1000,10000")
    ap.add_argument("--blocked", default="10000")
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--out", type=Path, default=REPO / "bench/out/noop-compare")
    a = ap.parse_args()
    for py in (a.old, a.new):  # as pip does for an installed package (PYTHONDONTWRITEBYTECODE may be set here)
        subprocess.run([py, "-c", "import buildlib, compileall, os; compileall.compile_dir("
                        "os.path.dirname(buildlib.__file__), quiet=1)"], check=True)
    rows = []
    for n, archs in [*((int(s), BUILDABLE) for s in a.sizes.split(",") if s),
                     *((int(s), HALF_BLOCKED) for s in a.blocked.split(",") if s)]:
        r = compare(a.old, a.new, a.out, n, archs, a.runs)
        rows.append(r)
        print(f"{r['engines']:>6} engines ({r['blocked']} blocked): old {r['median']['old']:.3f} s, "
              f"new {r['median']['new']:.3f} s, new/old {r['new_over_old']:.2f}", flush=True)
    (REPO / "bench/results/noop-compare.json").write_text(json.dumps({"runs": a.runs, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
