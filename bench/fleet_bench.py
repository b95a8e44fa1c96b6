"""Fleet-scale speed benchmark (issue 4): no-op `doit` / `doit plan` at 100 / 1,000 / 5,000 engines
against plain doit (md5 file_dep) and `dvc status` on the same tree; cold hashing against a plain
sequential read; the run after touching every shard.

    .venv/bin/python bench/fleet_bench.py              # full run (sizes below), writes bench/RESULTS.md
    .venv/bin/python bench/fleet_bench.py --quick      # smoke run: small sizes, 1 run each

Fleet: M models x S sparse shard files (os.truncate: the no-op path only stats them, so a 100+ GB
tree costs no disk) x A archs x P parallel configs, trtllm backend with the test stand-ins (an H100
and an A100, so sm90 and sm80 are both buildable here). Engines are made fresh with buildlib's own
API (Planner.state -> key/fields, record_outputs, write_manifest, validation.json): that is what a
real build writes, minus the minutes of trtllm-build. One small fleet is first built for real by
`doit` through the stand-in trtllm-build, to check the path end to end.
Every timed command is a fresh child process; wall = median of --runs; peak RSS from the child's
own rusage (a wrapper process per run).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

PY = sys.executable
MiB = 1 << 20
A100 = {"name": "NVIDIA A100-SXM4-80GB", "compute_cap": "8.0", "memory_total_mib": 81920, "memory_used_mib": 0}
PARALLEL = [(1, 1), (2, 1), (4, 1), (8, 1), (2, 2), (4, 2), (8, 2), (1, 2)]
ARCHS = ["sm90", "sm80"]
MARK, END = "<!-- fleet-bench -->", "<!-- /fleet-bench -->"
SHARD_PAD = os.urandom(4096)  # real bytes at the head of each sparse shard: shards differ in content


# -- timing helpers -------------------------------------------------------------------------------------------

def timed(cmd: list[str], cwd: Path, env: dict[str, str] | None = None, check: bool = True) -> tuple[float, float]:
    """(wall seconds, peak RSS MiB) of cmd in a fresh child, via a wrapper whose RUSAGE_CHILDREN is only cmd."""
    wrapper = ("import json,resource,subprocess,sys,time\n"
               "t=time.perf_counter();r=subprocess.run(sys.argv[1:],stdout=subprocess.DEVNULL,stderr=subprocess.PIPE)\n"
               "w=time.perf_counter()-t;m=resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
               "print(json.dumps([w,m/1024,r.returncode,r.stderr.decode()[-2000:]]))")
    out = subprocess.run([PY, "-c", wrapper, *cmd], cwd=cwd, env=env, capture_output=True, text=True, check=True)
    wall, rss, rc, err = json.loads(out.stdout)
    if check and rc != 0:
        raise RuntimeError(f"{' '.join(cmd)} in {cwd}: exit {rc}\n{err}")
    return wall, rss


def median_of(runs: int, cmd: list[str], cwd: Path, env: dict[str, str] | None = None,
              before: Any = None) -> dict[str, float]:
    walls, rsss = [], []
    for _ in range(runs):
        if before:
            before()
        w, r = timed(cmd, cwd, env)
        walls.append(w)
        rsss.append(r)
    return {"wall": statistics.median(walls), "rss": max(rsss), "runs": runs,
            "min": min(walls), "max": max(walls)}


# -- the fleet ------------------------------------------------------------------------------------------------

def standins_env(root: Path) -> dict[str, str]:
    from tests.conftest import H100
    from tests.standins import standin_env

    env = standin_env(root / "standins", gpus=[H100, A100])
    env["STANDIN_TRTLLM_LOG"] = str(root / "trtllm-build.log")
    return env


def make_fleet(root: Path, models: int, shards: int, shard_bytes: int, archs: int, parallel: int,
               sparse: bool = True) -> dict[str, Any]:
    """models.yaml + pyproject + HF-like checkpoint dirs; returns the shape."""
    root.mkdir(parents=True, exist_ok=True)
    ck = root / "ckpt"
    for i in range(models):
        d = ck / f"m{i:04d}"
        d.mkdir(parents=True, exist_ok=True)
        (d / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "hidden_size": 64,
                                                   "vocab_size": 256, "num_hidden_layers": 2, "model": i}))
        for s in range(1, shards + 1):
            p = d / f"model-{s:05d}-of-{shards:05d}.safetensors"
            if p.exists() and (st := p.stat()).st_size == shard_bytes and sparse == (st.st_blocks * 512 < st.st_size):
                continue
            with open(p, "wb") as f:
                head = f"{i}:{s}:".encode() + SHARD_PAD
                if sparse:
                    f.write(head[:min(len(head), shard_bytes)])
                    f.truncate(shard_bytes)
                else:
                    for left in range(shard_bytes, 0, -8 * MiB):
                        f.write(os.urandom(min(left, 8 * MiB)))
    par = ", ".join(f"{{tp: {tp}, pp: {pp}}}" for tp, pp in PARALLEL[:parallel])
    lines = ["defaults:", "  backend: trtllm", "  dtype: float16", f"  archs: [{', '.join(ARCHS[:archs])}]",
             f"  parallel: [{par}]",
             "  build: {max_batch_size: 8, max_input_len: 1024, max_seq_len: 2048, gemm_plugin: auto}", "models:"]
    for i in range(models):
        lines += [f"  - name: m{i:04d}", f"    checkpoint: ckpt/m{i:04d}"]
        if i % 3 == 0:
            lines.append(f"    build: {{max_batch_size: {16 + i % 5}}}")
    (root / "models.yaml").write_text("\n".join(lines) + "\n")
    (root / "pyproject.toml").write_text('[tool.doit]\nloader = "buildlib"\n')
    return {"models": models, "shards": shards, "shard_bytes": shard_bytes, "archs": archs, "parallel": parallel,
            "engines": models * archs * parallel, "bytes": models * shards * shard_bytes}


def materialize(root: Path) -> None:
    """(Run under the stand-in env.) Write every engine as a build would: outputs, manifest, validation.json."""
    from buildlib.manifest import Manifest, record_outputs, write_json_durably, write_manifest
    from buildlib.plan import FRESH, Planner
    from buildlib.spec import load_spec

    planner = Planner(load_spec(root / "models.yaml"))
    n = 0
    for e in planner.engines():
        st = planner.state(e)
        if st.state == FRESH:
            continue
        assert st.key and st.fields, (e.id, st.state, st.reasons)
        d = e.dir(planner.spec.project)
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        (d / "config.json").write_text(json.dumps({"version": "1.2.1", "pretrained_config": {},
                                                   "build_config": {"id": e.id}}))
        for r in range(e.world_size):
            (d / f"rank{r}.engine").write_bytes(f"{st.key}:{r}".encode() * 64)
        ckpt = planner.checkpoint(e.model)
        assert ckpt is not None
        write_manifest(d, Manifest(st.key, st.fields, record_outputs(d, planner.cache),
                                   {k: list(v) for k, v in ckpt.files.items()}, e.id, {"bench": True}))
        write_json_durably(d / "validation.json", {"key": st.key, "ok": True})
        n += 1
    print(f"materialized {n} engines")


def engine_outputs(root: Path) -> dict[str, list[str]]:
    out = {}
    for m in sorted((root / "engines").glob("*/*/*/manifest.json")):
        d = m.parent
        out[d.relative_to(root / "engines").as_posix()] = sorted(p.name for p in d.iterdir()
                                                                 if p.name not in ("validation.json",))
    return out


def write_md5_dodo(root: Path) -> Path:
    """The same graph as plain doit tasks: one per engine, file_dep on every checkpoint file, targets = engine files."""
    d = root / "md5"
    d.mkdir(exist_ok=True)
    engines = engine_outputs(root)
    spec = {e: {"deps": [f"ckpt/{e.split('/')[0]}/{f}" for f in sorted(os.listdir(root / "ckpt" / e.split("/")[0]))],
                "targets": [f"engines/{e}/{f}" for f in files]} for e, files in engines.items()}
    (d / "graph.json").write_text(json.dumps(spec))
    (d / "dodo.py").write_text(f'''\
import json, os
ROOT = {str(root)!r}
DOIT_CONFIG = {{"check_file_uptodate": "md5", "backend": "sqlite3", "dep_file": ".doit.db", "verbosity": 0}}
def _build():
    return None
def task_build():
    with open(os.path.join(os.path.dirname(__file__), "graph.json")) as f:
        graph = json.load(f)
    for e, s in graph.items():
        yield {{"name": e, "actions": [_build], "file_dep": [os.path.join(ROOT, p) for p in s["deps"]],
               "targets": [os.path.join(ROOT, p) for p in s["targets"]]}}
''')
    return d


def prime_md5_db(md5dir: Path, sparse_md5: dict[int, str] | None) -> None:
    """Fill doit's md5 database as a first `doit` run would. For sparse shards (all zeros past a 4 KiB head),
    md5 is computed once per distinct content instead of once per (task, file): setup only, not measured."""
    code = f'''
import hashlib, os, sys
from doit import dependency
from doit.doit_cmd import DoitMain
from doit.cmd_base import ModuleTaskLoader
memo = {{}}
orig = dependency.MD5Checker.get_state
def get_state(self, dep, current_state):
    st = os.stat(dep)
    k = (st.st_ino, st.st_mtime_ns, st.st_size)
    if k not in memo:
        memo[k] = orig(self, dep, current_state)
    return memo[k]
dependency.MD5Checker.get_state = get_state
sys.path.insert(0, {str(md5dir)!r})
import dodo
sys.exit(DoitMain(ModuleTaskLoader(dodo)).run([]))
'''
    subprocess.run([PY, "-c", code], cwd=md5dir, check=True, stdout=subprocess.DEVNULL)


def write_dvc(root: Path, dvc: Path) -> Path:
    """dvc.yaml: one stage per engine; deps = its checkpoint dir; cmd = the build command with its options (dvc
    records the cmd in dvc.lock, so an option change reruns the stage); outs = engine dir.

    Options in the cmd, not `params:` from a params.yaml: dvc re-parses params.yaml for every stage that names
    it, which made `dvc status` 7x slower at 100 engines (9.3 s vs 1.3 s): the cmd form is the fair baseline."""
    import yaml

    engines = engine_outputs(root)
    stages = {}
    spec = yaml.safe_load((root / "models.yaml").read_text())
    for e in engines:
        model, arch, par = e.split("/")
        m = next(x for x in spec["models"] if x["name"] == model)
        opts = {**spec["defaults"]["build"], **(m.get("build") or {}), "arch": arch, "parallel": par}
        stages[e.replace("/", "_")] = {"cmd": "build " + " ".join(f"--{k}={v}" for k, v in sorted(opts.items())),
                                       "deps": [f"ckpt/{model}"], "outs": [{f"engines/{e}": {"cache": False}}]}
    (root / "params.yaml").unlink(missing_ok=True)
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}))
    if not (root / ".dvc").exists():
        subprocess.run([str(dvc), "init", "--no-scm", "-q"], cwd=root, check=True)
    def status() -> str:
        return subprocess.run([str(dvc), "status"], cwd=root, capture_output=True, text=True, check=True).stdout

    # dvc commit md5-hashes every checkpoint byte (4 min at 1,000 engines here): not again when already done
    if not ((root / "dvc.lock").exists() and "up to date" in status()):
        subprocess.run([str(dvc), "commit", "-f", "-q"], cwd=root, check=True)
        out = status()
        assert "up to date" in out, out[:2000]
    return root


def ensure_dvc(out: Path) -> Path | None:
    venv = out / "dvc-venv"
    dvc = venv / "bin" / "dvc"
    if not dvc.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        r = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "dvc"], capture_output=True, text=True)
        if r.returncode != 0:
            print("dvc install failed:", r.stderr[-500:])
            return None
    return dvc


def dvc_version(dvc: Path) -> str:
    return subprocess.run([str(dvc), "--version"], capture_output=True, text=True).stdout.strip()


# -- cold hashing ---------------------------------------------------------------------------------------------

def drop_caches(files: list[Path]) -> str:
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return "drop_caches"
    except OSError:
        for p in files:
            fd = os.open(p, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
        return "posix_fadvise(DONTNEED)"


PLAIN_READ = ("import mmap,sys,time\nbuf=mmap.mmap(-1,8<<20);t=time.perf_counter();n=0\n"
              "for p in sys.argv[1:]:\n with open(p,'rb',buffering=0) as f:\n"
              "  while (k:=f.readinto(buf)): n+=k\nprint(n/(time.perf_counter()-t))")
OUR_HASH = ("import sys,time;from pathlib import Path;from buildlib.hashing import digest_files\n"
            "ps=[Path(p) for p in sys.argv[1:]];t=time.perf_counter();digest_files(ps,None)\n"
            "n=sum(p.stat().st_size for p in ps);print(n/(time.perf_counter()-t))")


def cold_hash(out: Path, gb: float, nfiles: int, runs: int) -> dict[str, Any]:
    d = out / "cold"
    d.mkdir(parents=True, exist_ok=True)
    size = int(gb * (1 << 30)) // nfiles
    files = [d / f"shard-{i}.bin" for i in range(nfiles)]
    for p in files:
        if not p.exists() or p.stat().st_size != size:
            with open(p, "wb") as f:
                left = size
                block = os.urandom(64 * MiB)
                while left:
                    k = min(left, len(block))
                    f.write(block[:k])
                    left -= k
                    block = hashlib.sha256(block[:32]).digest() * (len(block) // 32)  # differ per block
    res: dict[str, Any] = {"bytes": size * nfiles, "files": nfiles}
    args = [str(p) for p in files]
    for mode in ("cached", "cold"):
        plain, ours = [], []
        for i in range(runs):
            order = [("plain", PLAIN_READ), ("ours", OUR_HASH)]
            for name, code in (order if i % 2 == 0 else order[::-1]):
                if mode == "cold":
                    res["drop"] = drop_caches(files)
                else:
                    subprocess.run(["cat", *args], stdout=subprocess.DEVNULL, check=True)
                r = subprocess.run([PY, "-c", code, *args], cwd=REPO, capture_output=True, text=True, check=True)
                (plain if name == "plain" else ours).append(float(r.stdout) / 1e9)
        res[mode] = {"plain": statistics.median(plain), "ours": statistics.median(ours)}
    return res


# -- the benchmark --------------------------------------------------------------------------------------------

def touch_all(root: Path) -> None:
    for p in (root / "ckpt").glob("*/*.safetensors"):
        os.utime(p)
    time.sleep(0.15)  # past the stat cache's racy window (a real edit is rarely followed within 100 ms)


def bench_noop(root: Path, env: dict[str, str], md5dir: Path, dvc: Path | None, runs: int) -> dict[str, Any]:
    doit = [PY, "-m", "doit"]
    timed(doit, root, env)  # warm: stat cache, parse cache, page cache
    r: dict[str, Any] = {}
    r["doit"] = median_of(runs, doit, root, env)
    r["plan"] = median_of(runs, [*doit, "plan", "--json"], root, env)
    timed(doit, md5dir)
    r["md5"] = median_of(runs, doit, md5dir)
    if dvc is not None:
        timed([str(dvc), "status"], root)
        r["dvc"] = median_of(runs, [str(dvc), "status"], root)
    return r


def check_fresh(root: Path, env: dict[str, str]) -> None:
    r = subprocess.run([PY, "-m", "doit", "plan", "--json"], cwd=root, env=env, capture_output=True, text=True)
    states = [e["state"] for e in json.loads(r.stdout)]
    bad = [s for s in states if s != "fresh"]
    assert not bad, f"{len(bad)} engines not fresh: {bad[:3]}"
    out = subprocess.run([PY, "-m", "doit"], cwd=root, env=env, capture_output=True, text=True).stdout
    # every engine left out as up to date, no task executed
    assert f"{len(states)} engine(s) up to date" in out and ".  " not in out, out[:500]


def real_doit_smoke(out: Path) -> str:
    root = out / "smoke"
    shutil.rmtree(root, ignore_errors=True)
    make_fleet(root, 2, 2, 1 * MiB, 2, 2, sparse=False)
    env = standins_env(root)
    t = time.perf_counter()
    r = subprocess.run([PY, "-m", "doit"], cwd=root, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    wall = time.perf_counter() - t
    check_fresh(root, env)
    n = len(Path(env["STANDIN_TRTLLM_LOG"]).read_text().splitlines())
    return (f"real `doit` over a 2-model fleet (8 engines) built {n} engines via the stand-in trtllm-build "
            f"in {wall:.1f} s; all fresh after")


def machine() -> str:
    info = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((ln.split(":", 1)[1].strip() for ln in info if ln.startswith("model name")), "?")
    src = subprocess.run(["df", "-h", "--output=source,fstype,size", str(REPO)], capture_output=True, text=True)
    disk = " ".join(src.stdout.splitlines()[-1].split())
    rot = "?"
    dev = disk.split()[0].removeprefix("/dev/").rstrip("0123456789")
    flag = Path(f"/sys/block/{dev}/queue/rotational")
    if flag.exists():
        rot = "rotational" if flag.read_text().strip() == "1" else "non-rotational"
    meminfo = Path("/proc/meminfo").read_text().splitlines()
    mem = int(next(ln.split()[1] for ln in meminfo if ln.startswith("MemTotal"))) // (1 << 20)
    return (f"{os.cpu_count()} cores ({cpu}), {mem} GiB RAM, disk {disk} ({rot}), Python {platform.python_version()}")


def fmt_s(x: float) -> str:
    return f"{x:.3f} s" if x < 10 else f"{x:.1f} s"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: 20/100 engines, small files, 1 run")
    ap.add_argument("--engines", default="100,1000,5000", help="fleet sizes (engines)")
    ap.add_argument("--archs", type=int, default=2)
    ap.add_argument("--parallel", type=int, default=5, help="parallel configs per model (engines = M*A*P)")
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--shard-mb", type=float, default=128, help="shard size (1,000 engines: 100 models)")
    ap.add_argument("--real-data", action="store_true", help="shards of random bytes instead of sparse files "
                    "(the fleet then takes its full size on disk)")
    ap.add_argument("--max-gb", type=float, default=110, help="cap on a fleet's checkpoint bytes: larger fleets get "
                    "smaller shards (doit-md5's database must be filled by md5-hashing every byte once)")
    ap.add_argument("--dvc-max", type=int, default=5000, help="largest fleet to compare with dvc (dvc hashes "
                    "every checkpoint byte once with md5 at commit time)")
    ap.add_argument("--touch-engines", type=int, default=1000)
    ap.add_argument("--touch-shard-mb", type=float, default=1.0)
    ap.add_argument("--cold-gb", type=float, default=4.0)
    ap.add_argument("--cold-files", type=int, default=8)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--out", type=Path, help="work dir [default: bench/out/fleet, or bench/out/quick with --quick]")
    ap.add_argument("--no-write", action="store_true", help="do not update bench/RESULTS.md")
    ap.add_argument("--materialize", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--render", type=Path, help="re-render bench/RESULTS.md from a results.json of an earlier run")
    a = ap.parse_args()
    if a.materialize:
        return materialize(a.materialize)
    if a.render:
        return write_results(report(json.loads(a.render.read_text())))
    if a.quick:
        a.engines, a.shard_mb, a.runs, a.touch_engines, a.cold_gb, a.cold_files = "20,100", 4, 1, 100, 0.25, 4
        a.dvc_max = 100
    out: Path = (a.out or REPO / "bench" / "out" / ("quick" if a.quick else "fleet")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    dvc = ensure_dvc(out.parent)
    # Byte-compile buildlib once, as pip does for an installed package: with PYTHONDONTWRITEBYTECODE set (as on
    # this machine) an editable install would otherwise recompile every module in every timed run.
    subprocess.run([PY, "-m", "compileall", "-q", str(REPO / "buildlib")], check=True)
    lines_log: list[str] = []

    def log(s: str) -> None:
        print(s, flush=True)
        lines_log.append(s)

    log(real_doit_smoke(out))
    empty = out / "empty"
    empty.mkdir(exist_ok=True)
    (empty / "dodo.py").write_text('def task_nothing():\n    return {"actions": None}\n')
    floor = median_of(a.runs, [PY, "-m", "doit"], empty)
    log(f"doit with one empty task: {json.dumps(floor)}")
    per_model = a.archs * a.parallel
    rows = []
    for n in [int(x) for x in a.engines.split(",")]:
        models = max(1, n // per_model)
        root = out / f"n{n}"
        t = time.perf_counter()
        shard_bytes = int(min(a.shard_mb * MiB, a.max_gb * 1e9 / (models * a.shards)))
        shape = make_fleet(root, models, a.shards, shard_bytes, a.archs, a.parallel, sparse=not a.real_data)
        env = standins_env(root)
        subprocess.run([PY, __file__, "--materialize", str(root)], env=env, check=True, cwd=REPO)
        check_fresh(root, env)
        md5dir = write_md5_dodo(root)
        prime_md5_db(md5dir, None)
        use_dvc = dvc if (dvc is not None and n <= a.dvc_max) else None
        if use_dvc is not None:
            write_dvc(root, use_dvc)
        log(f"fleet {n}: {shape['engines']} engines, {models} models x {a.shards} shards, "
            f"{shape['bytes'] / 1e9:.1f} GB ({'real' if a.real_data else 'sparse'}), "
            f"setup {time.perf_counter() - t:.0f} s")
        r = bench_noop(root, env, md5dir, use_dvc, a.runs)
        rows.append((shape, r))
        log(f"  {json.dumps(r)}")
    # touch every shard
    tn = a.touch_engines
    troot = out / f"touch{tn}"
    tshape = make_fleet(troot, max(1, tn // per_model), a.shards, int(a.touch_shard_mb * MiB), a.archs, a.parallel)
    tenv = standins_env(troot)
    subprocess.run([PY, __file__, "--materialize", str(troot)], env=tenv, check=True, cwd=REPO)
    tmd5 = write_md5_dodo(troot)
    prime_md5_db(tmd5, None)
    doit = [PY, "-m", "doit"]
    timed(doit, troot, tenv)
    ours_touch, ours_after, md5_touch, md5_after = [], [], [], []
    for _ in range(a.runs):
        touch_all(troot)
        ours_touch.append(timed(doit, troot, tenv))
        ours_after.append(timed(doit, troot, tenv))
    timed(doit, tmd5)
    for _ in range(a.runs):
        touch_all(troot)
        md5_touch.append(timed(doit, tmd5))
        md5_after.append(timed(doit, tmd5))
    check_fresh(troot, tenv)
    touch = {k: {"wall": statistics.median(w for w, _ in v), "rss": max(r for _, r in v)}
             for k, v in (("ours", ours_touch), ("ours_after", ours_after), ("md5", md5_touch),
                          ("md5_after", md5_after))}
    log(f"touch: {json.dumps(touch)}")
    cold = cold_hash(out, a.cold_gb, a.cold_files, a.runs)
    log(f"cold: {json.dumps(cold)}")
    import doit as doit_pkg

    import buildlib

    res = {"date": time.strftime("%Y-%m-%d"), "machine": machine(), "argv": sys.argv[1:], "quick": a.quick,
           "shards": a.shards, "archs": a.archs, "parallel": a.parallel, "runs": a.runs,
           "versions": {"buildlib": buildlib.__version__, "doit": ".".join(map(str, doit_pkg.__version__)),
                        "dvc": dvc_version(dvc) if dvc else None},
           "smoke": lines_log[0], "floor": floor, "sparse": not a.real_data,
           "rows": rows, "tshape": tshape, "touch": touch, "cold": cold}
    (out / "results.json").write_text(json.dumps(res, indent=1))
    md = report(res)
    print(md)
    if not a.no_write and not a.quick:
        write_results(md)


def report(res: dict[str, Any]) -> str:
    """bench/RESULTS.md's section from a run's results (main() saves them as results.json)."""
    v = res["versions"]
    cmd = "    .venv/bin/python bench/fleet_bench.py" + "".join(f" {x}" for x in res["argv"])
    L = [MARK, f"## Fleet-scale speed (issue 4) — {res['date']}", "",
         f"Machine: {res['machine']}. buildlib {v['buildlib']}, doit {v['doit']}"
         + (f", dvc {v['dvc']}" if v["dvc"] else "") + ". Command:", "", cmd, "",
         f"Fleets: M models × {res['shards']} shard files × {res['archs']} archs (sm90, sm80) × "
         f"{res['parallel']} tp/pp configs, trtllm backend with the test stand-ins (stand-in nvidia-smi shows an "
         "H100 and an A100). Shards are "
         + ("**sparse** files (os.truncate with a 4 KiB real head; `--real-data` writes random bytes instead): the "
            "no-op path only stats them, so the 100+ GB tree costs no disk. " if res.get("sparse", True) else
            "files of random bytes (`--real-data`). ")
         + "Engines were made fresh with buildlib's API (Planner.state key/fields, record_outputs, "
         "write_manifest, validation.json), as a build writes them; "
         f"a real `doit` run checked the path end to end ({res['smoke']}). "
         "Ours: the buildlib loader; per engine a convert, build and validate task, but a `doit` run gives doit "
         "no tasks for engines with nothing to do (their stamps prove them fresh: key + stats of manifest, "
         "validation.json and outputs), so a no-op is one key and ~7 stats per engine. "
         "doit-md5: the same engines as one plain doit task each (file_dep = every checkpoint file, targets = "
         "engine files), its .doit.db filled by a first run, in the same venv. dvc: one stage per engine (deps = "
         "checkpoint dir, cmd = the build command with its options, outs = engine dir: options as `params:` from "
         "a params.yaml made dvc 7x slower), `dvc commit` so that `dvc status` is a no-op. Larger fleets get "
         "smaller shards (--max-gb). buildlib is byte-compiled first (this machine sets "
         f"PYTHONDONTWRITEBYTECODE). Each number: median of {res['runs']} runs, fresh process each, page cache warm; "
         f"RSS = peak of any run. For scale: `doit` itself with one empty task takes {fmt_s(res['floor']['wall'])} "
         "here (interpreter, doit, its plugin scan).", "",
         "| engines | checkpoints | ours `doit` | ours `doit plan --json` | doit-md5 `doit` | `dvc status` "
         "| md5 / ours | dvc / ours | peak RSS ours / md5 / dvc |",
         "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for shape, r in res["rows"]:
        dv = r.get("dvc")
        dvc_ratio = f"{dv['wall'] / r['doit']['wall']:.1f}×" if dv else "n/a"
        dvc_rss = f"{dv['rss']:.0f}" if dv else "n/a"
        L.append(f"| {shape['engines']} | {shape['bytes'] / 1e9:.0f} GB | {fmt_s(r['doit']['wall'])} "
                 f"| {fmt_s(r['plan']['wall'])} | {fmt_s(r['md5']['wall'])} | {fmt_s(dv['wall']) if dv else 'n/a'} "
                 f"| {r['md5']['wall'] / r['doit']['wall']:.2f}× | "
                 f"{dvc_ratio} | {r['doit']['rss']:.0f} / {r['md5']['rss']:.0f} / {dvc_rss} MiB |")
    t, tshape, cold = res["touch"], res["tshape"], res["cold"]
    L += ["", "md5 / ours and dvc / ours above 1: we are faster. In a small fleet our fixed start-up dominates "
          "(doit finds the buildlib loader through one more entry-point scan, buildlib's imports, the toolchain "
          "probe: ~40 ms here), where doit-md5 pays per task and per file_dep; from ~1,000 engines on the per-engine "
          "cost decides.", "",
          f"After `touch` on every shard ({tshape['engines']} engines, {tshape['models']} models × "
          f"{tshape['shards']} shards of {tshape['shard_bytes'] / MiB:.0f} MiB, sparse): the first run re-hashes each "
          "touched file once and refreshes the stat cache; doit's md5 checker re-hashes every file_dep of every task, "
          "on this run and every later one (doit PR #431).", "",
          "| | ours | doit-md5 | md5 / ours |", "|---|---:|---:|---:|",
          f"| run after touch | {fmt_s(t['ours']['wall'])} | {fmt_s(t['md5']['wall'])} "
          f"| {t['md5']['wall'] / t['ours']['wall']:.1f}× |",
          f"| the run after that | {fmt_s(t['ours_after']['wall'])} | {fmt_s(t['md5_after']['wall'])} "
          f"| {t['md5_after']['wall'] / t['ours_after']['wall']:.1f}× |",
          f"| peak RSS | {t['ours']['rss']:.0f} MiB | {t['md5']['rss']:.0f} MiB | |",
          "", f"Cold hashing: {cold['bytes'] / 2**30:.1f} GiB of random data in {cold['files']} real files; "
          f"plain = one sequential reader (8 MiB mmap buffer); ours = digest_files (xxh3-128, parallel, no stat "
          f"cache). Cold = after {cold.get('drop', 'n/a')}.", "",
          "| page cache | plain read | ours (hash) | ours / plain |", "|---|---:|---:|---:|"]
    for mode in ("cached", "cold"):
        c = cold[mode]
        L.append(f"| {mode} | {c['plain']:.2f} GB/s | {c['ours']:.2f} GB/s | {c['ours'] / c['plain']:.0%} |")
    L += ["", END]
    return "\n".join(L) + "\n"


def write_results(md: str) -> None:
    path = REPO / "bench" / "RESULTS.md"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if MARK in text and END in text:
        head, rest = text.split(MARK, 1)
        tail = rest.split(END, 1)[1].lstrip("\n")
        text = head + md + ("\n" + tail if tail else "")
    else:
        text = text.rstrip("\n") + "\n\n" + md
    path.write_text(text)


if __name__ == "__main__":
    main()
