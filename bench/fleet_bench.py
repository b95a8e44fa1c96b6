"""Fleet-scale speed benchmark (issues 4 and 15): no-op `doit` / `doit plan --json` at 100 / 1,000 / 10,000
engines, and on fleets with half their engines for an arch this host lacks, against plain doit (md5 file_dep,
one task per engine, and with one checkpoint task per model) and `dvc status` on the same tree, all in one run;
the run after touching every shard; cold hashing against plain reads (one reader, and as many readers as we
use) with the page cache dropped.

    .venv/bin/python bench/fleet_bench.py              # full run (sizes below), writes bench/RESULTS.md
    .venv/bin/python bench/fleet_bench.py --quick      # smoke run: small sizes, 1 run each

Fleet: M models x S sparse shard files (os.truncate: the no-op path only stats them, so a large tree costs no
disk) x A archs x P parallel configs, trtllm backend with the test stand-ins (8 H100 and 8 A100, so sm90 and
sm80 are buildable here and sm100 is not). Engines are made fresh with buildlib's own API (Planner.state ->
key/fields, record_outputs, write_manifest, validation.json): what a real build writes, minus the minutes of
trtllm-build. One small fleet is first built for real by `doit` through the stand-in trtllm-build, to check
the path end to end. Every timed command is a fresh child process; wall = median of --runs; peak RSS from the
child's own rusage (a wrapper process per run). Raw results: bench/results/fleet.json.
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
BUILDABLE = ["sm90", "sm80"]  # the stand-in host has 8 H100 and 8 A100
HALF_BLOCKED = ["sm90", "sm100"]  # half the engines for an arch this host lacks
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

    env = standin_env(root / "standins", gpus=[H100] * 8 + [A100] * 8)  # every tp/pp config of the fleets fits
    env["STANDIN_TRTLLM_LOG"] = str(root / "trtllm-build.log")
    return env


def safetensors_head(total: int, tag: str) -> bytes:
    """The header of a valid safetensors file of `total` bytes holding one U8 tensor (checkpoint checks read it)."""
    n = total
    for _ in range(3):  # the header's length depends on the digits of the tensor's length: settles in two
        body = json.dumps({"__metadata__": {"shard": tag},
                           "w": {"dtype": "U8", "shape": [n], "data_offsets": [0, n]}}).encode()
        body += b" " * (-len(body) % 8)
        if total - 8 - len(body) == n:
            return len(body).to_bytes(8, "little") + body
        n = total - 8 - len(body)
    raise AssertionError(f"no safetensors header for {total} bytes")


def make_fleet(root: Path, models: int, shards: int, shard_bytes: int, archs: list[str], parallel: int,
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
                head = safetensors_head(shard_bytes, f"{i}:{s}")
                f.write(head)
                if sparse:  # the tensor's bytes: 4 KiB of real bytes (shards differ), then a hole
                    f.write(SHARD_PAD[:shard_bytes - len(head)])
                    f.truncate(shard_bytes)
                else:
                    for left in range(shard_bytes - len(head), 0, -8 * MiB):
                        f.write(os.urandom(min(left, 8 * MiB)))
    par = ", ".join(f"{{tp: {tp}, pp: {pp}}}" for tp, pp in PARALLEL[:parallel])
    lines = ["defaults:", "  backend: trtllm", "  dtype: float16", f"  archs: [{', '.join(archs)}]",
             f"  parallel: [{par}]",
             "  build: {max_batch_size: 8, max_input_len: 1024, max_seq_len: 2048, gemm_plugin: auto}", "models:"]
    for i in range(models):
        lines += [f"  - name: m{i:04d}", f"    checkpoint: ckpt/m{i:04d}"]
        if i % 3 == 0:
            lines.append(f"    build: {{max_batch_size: {16 + i % 5}}}")
    (root / "models.yaml").write_text("\n".join(lines) + "\n")
    (root / "pyproject.toml").write_text('[tool.doit]\nloader = "buildlib"\n')
    return {"models": models, "shards": shards, "shard_bytes": shard_bytes, "archs": archs, "parallel": parallel,
            "engines": models * len(archs) * parallel, "bytes": models * shards * shard_bytes,
            "blocked": models * parallel * sum(a not in BUILDABLE for a in archs)}


def materialize(root: Path) -> None:
    """(Run under the stand-in env.) Write every engine as a build would: outputs, manifest, validation.json."""
    from buildlib.core.manifest import Manifest, record_outputs, write_json_durably, write_manifest
    from buildlib.host.confine import claim
    from buildlib.plan.planner import Planner
    from buildlib.plan.state import BLOCKED, FRESH
    from buildlib.spec.load import load_spec

    planner = Planner(load_spec(root / "models.yaml"))
    claim(planner.spec.project.engines_dir)  # as the first build does (buildlib.confine)
    n = 0
    for e in planner.engines():
        st = planner.state(e)
        if st.state in (FRESH, BLOCKED):
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


def fleet_engines(root: Path) -> dict[str, dict[str, Any]]:
    """Every engine of the fleet's models.yaml -> its model, arch and the files a build writes (targets)."""
    import yaml

    spec = yaml.safe_load((root / "models.yaml").read_text())
    archs = spec["defaults"]["archs"]
    out = {}
    for m in spec["models"]:
        for a in archs:
            for par in spec["defaults"]["parallel"]:
                tp, pp = par["tp"], par.get("pp", 1)
                out[f"{m['name']}/{a}/tp{tp}-pp{pp}"] = {
                    "model": m["name"], "arch": a,
                    "targets": ["config.json", *(f"rank{r}.engine" for r in range(tp * pp))]}
    return out


MD5_DODO = '''\
import json, os, subprocess
ROOT = {root!r}
PER_MODEL = {per_model!r}
DOIT_CONFIG = {{"check_file_uptodate": "md5", "backend": "sqlite3", "dep_file": ".doit.db", "verbosity": 0}}
HERE = os.path.dirname(os.path.abspath(__file__))


def host_archs():
    """The archs this host can build for: one nvidia-smi query, as buildlib's probe makes."""
    out = subprocess.run(["nvidia-smi", "--query-gpu=compute_cap", "--format=csv,noheader"],
                         capture_output=True, text=True).stdout
    return {{"sm" + line.strip().replace(".", "") for line in out.splitlines() if line.strip()}}


def _build():
    return None


def _stamp(path):
    with open(path, "w") as f:
        f.write("checked")


with open(os.path.join(HERE, "graph.json")) as f:
    GRAPH = json.load(f)
HERE_ARCHS = host_archs()
NEEDED = sorted({{s["model"] for s in GRAPH["engines"].values() if s["arch"] in HERE_ARCHS}})


def ckpt_stamp(model):
    return os.path.join(HERE, "stamps", model)


if PER_MODEL:
    def task_ckpt():
        """One task per checkpoint: each file hashed once, whatever number of engines use it."""
        os.makedirs(os.path.join(HERE, "stamps"), exist_ok=True)
        for m in NEEDED:
            yield {{"name": m, "actions": [(_stamp, [ckpt_stamp(m)])], "targets": [ckpt_stamp(m)],
                   "file_dep": [os.path.join(ROOT, p) for p in GRAPH["models"][m]]}}


def task_build():
    for e, s in GRAPH["engines"].items():
        if s["arch"] not in HERE_ARCHS:
            continue  # an engine this host cannot build: no task
        deps = [ckpt_stamp(s["model"])] if PER_MODEL else [os.path.join(ROOT, p) for p in GRAPH["models"][s["model"]]]
        yield {{"name": e, "actions": [_build], "file_dep": deps,
               "targets": [os.path.join(ROOT, "engines", e, t) for t in s["targets"]]}}
'''


def write_md5_dodo(root: Path, per_model: bool) -> Path:
    """The same graph as plain doit tasks, as a user would fairly write it: tasks only for the engines this host
    can build (one nvidia-smi query), each engine's targets = its files; file_dep = every checkpoint file (one
    task per engine, today's baseline), or per_model: one checkpoint task per model (file_dep = its files,
    target = a stamp) and each engine depending on that stamp, so each file is hashed once."""
    d = root / ("md5-per-model" if per_model else "md5")
    d.mkdir(exist_ok=True)
    models = {m.name: [f"ckpt/{m.name}/{f}" for f in sorted(os.listdir(m))] for m in sorted((root / "ckpt").iterdir())}
    (d / "graph.json").write_text(json.dumps({"models": models, "engines": fleet_engines(root)}))
    (d / "dodo.py").write_text(MD5_DODO.format(root=str(root), per_model=per_model))
    return d


def prime_md5_db(md5dir: Path, env: dict[str, str]) -> None:
    """Fill doit's md5 database as a first `doit` run would (setup, not measured). A file's md5 is computed once
    per (inode, mtime, size), not once per task that lists it: the per-engine graph names each shard in ~10 tasks."""
    code = f'''
import os, sys
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
    subprocess.run([PY, "-c", code], cwd=md5dir, env=env, check=True, stdout=subprocess.DEVNULL)


def write_dvc(root: Path, dvc: Path) -> Path:
    """dvc.yaml: one stage per engine; deps = its checkpoint dir; cmd = the build command with its options (dvc
    records the cmd in dvc.lock, so an option change reruns the stage); outs = engine dir.

    Options in the cmd, not `params:` from a params.yaml: dvc re-parses params.yaml for every stage that names
    it, which made `dvc status` 7x slower at 100 engines (9.3 s vs 1.3 s): the cmd form is the fair baseline."""
    import yaml

    engines = [e for e, v in fleet_engines(root).items() if v["arch"] in BUILDABLE]  # as doit-md5: those built here
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


# A plain read of every byte into an 8 MiB buffer, on `threads` threads taking files from one list (threads = 1: one
# reader, file after file); the same buffer size and thread count as digest_files, so the only difference is the hash.
PLAIN_READ = """\
import mmap, os, sys, threading, time
threads, paths = int(sys.argv[1]), sys.argv[2:]
todo = sorted(paths, key=lambda p: -os.stat(p).st_size)
lock = threading.Lock()
def worker():
    buf = mmap.mmap(-1, 8 << 20)
    while True:
        with lock:
            if not todo:
                return
            p = todo.pop(0)
        with open(p, "rb", buffering=0) as f:
            while f.readinto(buf):
                pass
n = sum(os.stat(p).st_size for p in paths)
t = time.perf_counter()
ts = [threading.Thread(target=worker) for _ in range(threads)]
[x.start() for x in ts]
[x.join() for x in ts]
print(n / (time.perf_counter() - t))
"""
OUR_HASH = ("import sys,time;from pathlib import Path;from buildlib.core.hashing import digest_files\n"
            "ps=[Path(p) for p in sys.argv[2:]];n=sum(p.stat().st_size for p in ps);t=time.perf_counter()\n"
            "digest_files(ps,None);print(n/(time.perf_counter()-t))")


def cold_hash(out: Path, gb: float, nfiles: int, runs: int, cached_gb: float) -> dict[str, Any]:
    """GB/s of one plain reader, of plain readers on as many threads as digest_files uses, and of digest_files
    (xxh3-128, no stat cache) over the same real files: cold (page cache dropped before every pass; the set is
    larger than RAM where the disk allows) and cached (a subset of at most cached_gb, read once before)."""
    from buildlib.core.hashing import _workers

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
    threads = _workers(nfiles)
    res: dict[str, Any] = {"bytes": size * nfiles, "files": nfiles, "threads": threads,
                           "ram_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")}
    cached = files[:max(1, min(nfiles, int(cached_gb * (1 << 30)) // size))]
    res["cached_bytes"] = size * len(cached)
    readers = [("plain1", PLAIN_READ, "1"), ("plain", PLAIN_READ, str(threads)), ("ours", OUR_HASH, "-")]
    for mode, subset in (("cached", cached), ("cold", files)):
        got: dict[str, list[float]] = {name: [] for name, _, _ in readers}
        args = [str(p) for p in subset]
        for i in range(runs):
            for name, code, arg in (readers if i % 2 == 0 else readers[::-1]):
                if mode == "cold":
                    res["drop"] = drop_caches(subset)
                else:
                    subprocess.run(["cat", *args], stdout=subprocess.DEVNULL, check=True)
                r = subprocess.run([PY, "-c", code, arg, *args], cwd=REPO, capture_output=True, text=True, check=True)
                got[name].append(float(r.stdout) / 1e9)
        res[mode] = {name: statistics.median(v) for name, v in got.items()}
        res[mode + "_runs"] = got
    return res


# -- the benchmark --------------------------------------------------------------------------------------------

def touch_all(root: Path) -> None:
    """utime every shard, then wait out the racy window (RACY_NS) of both tools' caches: an edit is rarely
    followed by a build within 100 ms, and a file changed within it is re-hashed, not trusted."""
    for p in (root / "ckpt").glob("*/*.safetensors"):
        os.utime(p)
    time.sleep(0.15)


def bench_noop(root: Path, env: dict[str, str], md5dirs: dict[str, Path], dvc: Path | None, runs: int,
               dvc_runs: int) -> dict[str, Any]:
    doit = [PY, "-m", "doit"]
    timed(doit, root, env)  # warm: stat cache, parse cache, page cache
    r: dict[str, Any] = {}
    r["doit"] = median_of(runs, doit, root, env)
    r["plan"] = median_of(runs, [*doit, "plan", "--json"], root, env)
    dodo = root / "dodo"  # the same models.yaml through a dodo.py like the repo's (BUILDLIB_MODELS names it)
    dodo.mkdir(exist_ok=True)
    shutil.copyfile(REPO / "dodo.py", dodo / "dodo.py")
    denv = {**env, "BUILDLIB_MODELS": str(root / "models.yaml")}
    timed(doit, dodo, denv)
    r["dodo"] = median_of(runs, doit, dodo, denv)
    for name, d in md5dirs.items():
        timed(doit, d, env)
        r[name] = median_of(runs, doit, d, env)
    if dvc is not None:
        timed([str(dvc), "status"], root)
        r["dvc"] = median_of(dvc_runs, [str(dvc), "status"], root)
    return r


def check_fresh(root: Path, env: dict[str, str], blocked: int) -> None:
    """Every engine fresh but the `blocked` ones, and a `doit` run leaves every engine out, running nothing."""
    r = subprocess.run([PY, "-m", "doit", "plan", "--json"], cwd=root, env=env, capture_output=True, text=True)
    states = [e["state"] for e in json.loads(r.stdout)]
    assert states.count("blocked") == blocked and states.count("fresh") == len(states) - blocked, \
        {s: states.count(s) for s in set(states)}
    out = subprocess.run([PY, "-m", "doit"], cwd=root, env=env, capture_output=True, text=True).stdout
    want = f"nothing to do: {len(states) - blocked} up to date" + (f", {blocked} not for this host" if blocked else "")
    assert want in out and ".  " not in out, out[-500:]


def check_md5_noop(md5dir: Path, env: dict[str, str], tasks: int) -> None:
    """A doit-md5 run after priming runs nothing, and has one task per buildable engine (+ checkpoint tasks)."""
    out = subprocess.run([PY, "-m", "doit", "-v", "2"], cwd=md5dir, env=env, capture_output=True, text=True)
    lines = out.stdout.splitlines()
    ran = [ln for ln in lines if ln.startswith(". ")]
    skipped = sum(ln.startswith(("-- build:", "-- ckpt:")) for ln in lines)
    assert not ran and skipped == tasks, (ran[:3], skipped, tasks)


def probe_seconds(env: dict[str, str], runs: int) -> float:
    """The stand-in nvidia-smi query, as buildlib and the doit-md5 dodo make it (median wall)."""
    walls = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run(["nvidia-smi", "--query-gpu=compute_cap", "--format=csv,noheader"], env=env,
                       capture_output=True, check=True)
        walls.append(time.perf_counter() - t)
    return statistics.median(walls)


def real_doit_smoke(out: Path) -> str:
    root = out / "smoke"
    shutil.rmtree(root, ignore_errors=True)
    make_fleet(root, 2, 2, 1 * MiB, BUILDABLE, 2, sparse=False)
    env = standins_env(root)
    t = time.perf_counter()
    r = subprocess.run([PY, "-m", "doit"], cwd=root, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    wall = time.perf_counter() - t
    check_fresh(root, env, 0)
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
    ap.add_argument("--engines", default="100,1000,10000", help="fleet sizes (engines), every engine buildable here")
    ap.add_argument("--blocked", default="1000,10000", help="fleet sizes with half the engines for sm100, which "
                    "this host lacks")
    ap.add_argument("--parallel", type=int, default=5, help="tp/pp configs per model (engines = M*2*P)")
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--shard-mb", type=float, default=16, help="shard size (1,000 engines: 100 models)")
    ap.add_argument("--real-data", action="store_true", help="shards of random bytes instead of sparse files "
                    "(the fleet then takes its full size on disk)")
    ap.add_argument("--max-gb", type=float, default=16, help="cap on a fleet's checkpoint bytes: larger fleets get "
                    "smaller shards (the baselines' databases are filled by md5-hashing every byte once)")
    ap.add_argument("--dvc-max", type=int, default=1000, help="largest fleet to compare with dvc (at 10,000 stages "
                    "`dvc commit` ran 18 min here without finishing, so `dvc status` could not be timed there)")
    ap.add_argument("--dvc-runs-above", type=int, default=2000, help="fleets larger than this time `dvc status` "
                    "once (it takes a minute or more there)")
    ap.add_argument("--touch-engines", type=int, default=1000)
    ap.add_argument("--touch-shard-mb", type=float, default=1.0)
    ap.add_argument("--cold-gb", type=float, default=32.0, help="real bytes for cold hashing (more than RAM where "
                    "the disk allows)")
    ap.add_argument("--cold-files", type=int, default=16)
    ap.add_argument("--cached-gb", type=float, default=4.0, help="the subset read with the page cache warm")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--cold-runs", type=int, default=3, help="runs of each cold-hashing reader (each reads --cold-gb)")
    ap.add_argument("--out", type=Path, help="work dir [default: bench/out/fleet, or bench/out/quick with --quick]")
    ap.add_argument("--no-write", action="store_true", help="do not update bench/RESULTS.md and bench/results/")
    ap.add_argument("--materialize", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--render", type=Path, help="re-render bench/RESULTS.md from a results json of an earlier run")
    a = ap.parse_args()
    if a.materialize:
        return materialize(a.materialize)
    if a.render:
        return write_results(report(json.loads(a.render.read_text())))
    if a.quick:
        a.engines, a.blocked, a.shard_mb, a.runs, a.touch_engines = "20,100", "100", 4, 1, 100
        a.cold_gb, a.cold_files, a.cached_gb, a.dvc_max, a.cold_runs = 0.25, 4, 0.1, 100, 1
    out: Path = (a.out or REPO / "bench" / "out" / ("quick" if a.quick else "fleet")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
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
    per_model = 2 * a.parallel
    rows = []
    fleets = [(int(x), BUILDABLE) for x in a.engines.split(",") if x] + \
             [(int(x), HALF_BLOCKED) for x in a.blocked.split(",") if x]
    for n, archs in fleets:
        models = max(1, n // per_model)
        root = out / (f"n{n}" if archs == BUILDABLE else f"half-blocked{n}")
        t = time.perf_counter()
        shard_bytes = int(min(a.shard_mb * MiB, a.max_gb * 1e9 / (models * a.shards)))
        shape = make_fleet(root, models, a.shards, shard_bytes, archs, a.parallel, sparse=not a.real_data)
        env = standins_env(root)
        subprocess.run([PY, __file__, "--materialize", str(root)], env=env, check=True, cwd=REPO)
        check_fresh(root, env, shape["blocked"])
        md5dirs = {"md5": write_md5_dodo(root, per_model=False), "md5m": write_md5_dodo(root, per_model=True)}
        buildable = shape["engines"] - shape["blocked"]
        for name, d in md5dirs.items():
            prime_md5_db(d, env)
            check_md5_noop(d, env, buildable + (models if name == "md5m" else 0))
        use_dvc = dvc if (dvc is not None and n <= a.dvc_max) else None
        if use_dvc is not None:
            write_dvc(root, use_dvc)
        log(f"fleet {n} ({'half blocked' if shape['blocked'] else 'all buildable'}): {shape['engines']} engines, "
            f"{models} models x {a.shards} shards, {shape['bytes'] / 1e9:.1f} GB "
            f"({'real' if a.real_data else 'sparse'}), setup {time.perf_counter() - t:.0f} s")
        r = bench_noop(root, env, md5dirs, use_dvc, a.runs, a.runs if n <= a.dvc_runs_above else 1)
        rows.append((shape, r))
        log(f"  {json.dumps(r)}")
    probe = probe_seconds(standins_env(out / "smoke"), a.runs)
    log(f"stand-in nvidia-smi query: {probe:.3f} s")
    touch = bench_touch(out, a, per_model)
    log(f"touch: {json.dumps(touch)}")
    cold = cold_hash(out, a.cold_gb, a.cold_files, a.cold_runs, a.cached_gb)
    log(f"cold: {json.dumps(cold)}")
    import doit as doit_pkg

    import buildlib

    res = {"date": time.strftime("%Y-%m-%d"), "machine": machine(), "argv": sys.argv[1:], "quick": a.quick,
           "shards": a.shards, "parallel": a.parallel, "runs": a.runs, "dvc_runs_above": a.dvc_runs_above,
           "dvc_max": a.dvc_max, "cold_runs": a.cold_runs,
           "versions": {"buildlib": buildlib.__version__, "doit": ".".join(map(str, doit_pkg.__version__)),
                        "dvc": dvc_version(dvc) if dvc else None},
           "smoke": lines_log[0], "floor": floor, "probe": probe, "sparse": not a.real_data,
           "rows": rows, "touch": touch, "cold": cold, "seconds": time.perf_counter() - t_start}
    (out / "results.json").write_text(json.dumps(res, indent=1))
    md = report(res)
    print(md)
    if not a.no_write and not a.quick:
        (REPO / "bench" / "results" / "fleet.json").write_text(json.dumps(res, indent=1) + "\n")
        write_results(md)


def bench_touch(out: Path, a: argparse.Namespace, per_model: int) -> dict[str, Any]:
    """The run after `touch` on every shard, and the run after that: ours, doit-md5 per engine and per model."""
    tn = a.touch_engines
    troot = out / f"touch{tn}"
    models = max(1, tn // per_model)
    tshape = make_fleet(troot, models, a.shards, int(a.touch_shard_mb * MiB), BUILDABLE, a.parallel)
    tenv = standins_env(troot)
    subprocess.run([PY, __file__, "--materialize", str(troot)], env=tenv, check=True, cwd=REPO)
    doit = [PY, "-m", "doit"]
    dirs = {"ours": troot, "md5": write_md5_dodo(troot, per_model=False), "md5m": write_md5_dodo(troot, per_model=True)}
    got: dict[str, Any] = {"shape": tshape}
    for name, d in dirs.items():
        if name != "ours":
            prime_md5_db(d, tenv)
        timed(doit, d, tenv)
        first, after = [], []
        for _ in range(a.runs):
            touch_all(troot)
            first.append(timed(doit, d, tenv))
            after.append(timed(doit, d, tenv))
        got[name] = {"wall": statistics.median(w for w, _ in first), "rss": max(r for _, r in first)}
        got[name + "_after"] = {"wall": statistics.median(w for w, _ in after), "rss": max(r for _, r in after)}
    check_fresh(troot, tenv, 0)
    for name in ("md5", "md5m"):
        check_md5_noop(dirs[name], tenv, tshape["engines"] + (models if name == "md5m" else 0))
    return got


def report(res: dict[str, Any]) -> str:
    """bench/RESULTS.md's section from a run's results (main() saves them as bench/results/fleet.json)."""
    v = res["versions"]
    cmd = "    .venv/bin/python bench/fleet_bench.py" + "".join(f" {x}" for x in res["argv"])
    rows, t, cold = res["rows"], res["touch"], res["cold"]
    L = [MARK, f"## Fleet-scale speed (issues 4 and 15) — {res['date']}", "",
         f"Machine: {res['machine']}. buildlib {v['buildlib']}, doit {v['doit']}"
         + (f", dvc {v['dvc']}" if v["dvc"] else "") + f". Whole run {res['seconds'] / 60:.0f} min. Command:", "",
         cmd, "", "Raw results: `bench/results/fleet.json`.", "",
         f"Fleets: M models × {res['shards']} shard files × 2 archs × {res['parallel']} tp/pp configs, trtllm backend "
         "with the test stand-ins (the stand-in nvidia-smi shows 8 H100 and 8 A100). *All buildable*: archs sm90 "
         "and sm80. *Half blocked*: sm90 and sm100, so half the engines are for an arch this host lacks (`doit` says "
         "`N not for this host`). Shards are "
         + ("**sparse** files (os.truncate with a 4 KiB real head): a no-op only stats them (every tool here "
            "compares stats, or mtimes, before it would read a byte), so their size does not enter these timings; "
            "it does enter the baselines' setup, which md5-hashes every byte once. " if res.get("sparse", True) else
            "files of random bytes (`--real-data`). ")
         + "Engines were made fresh with buildlib's API (Planner.state key/fields, record_outputs, "
         f"write_manifest, validation.json), as a build writes them; a real `doit` run checked the path end to end "
         f"({res['smoke']}).", "",
         "- **ours**: `doit` in the fleet repo, whose pyproject.toml has `[tool.doit] loader = \"buildlib\"` (the "
         "shipped way, and what the README tells another repo to write). A no-op gives doit no tasks for engines "
         "with nothing to do (fresh, or blocked with no store to restore them from): per fresh engine one key (a "
         "per-model template, buildlib.core.key.KeyTemplate) and ~7 stats (its stamp); per unbuilt engine one stat "
         "(none where its arch dir is absent) and no key; per checkpoint the stats of its files and dirs (its tree "
         "stamp); all checked on every core (buildlib.core.fanout).",
         "- **ours, dodo.py**: the same models.yaml through a dodo.py like this repo's (no loader set): doit gets "
         "every task of every engine (README: why the loader is the way to run it).",
         "- **doit-md5, per engine**: the engines this host can build (one `nvidia-smi` query in the dodo, as a "
         "user would write it; the blocked ones get no task) as one plain doit task each: file_dep = every "
         "checkpoint file, targets = the engine's files, `check_file_uptodate: md5`, its .doit.db filled by a "
         "first run.",
         "- **doit-md5, per model**: the same, with one checkpoint task per model (file_dep = its files, target = "
         "a stamp file) and each engine task depending on that stamp: each file is checked and hashed once.",
         "- **dvc**: one stage per buildable engine (deps = checkpoint dir, cmd = the build command with its "
         "options, outs = engine dir), `dvc commit` so that `dvc status` is a no-op; on fleets up to "
         f"{res.get('dvc_max', 1000):,} engines (n/a above: at 10,000 stages `dvc commit` ran 18 min on this machine "
         "without finishing, and was stopped, so `dvc status` could not be timed there).",
         "",
         f"Each number: median of {res['runs']} runs, each a fresh process, page cache warm; RSS = peak of any run. "
         f"For scale: `doit` itself with one empty task takes {fmt_s(res['floor']['wall'])} here, and the stand-in "
         f"nvidia-smi query {res['probe']:.3f} s (paid once by ours on the half-blocked fleets, where an engine's "
         "arch must be checked against the host, and by both doit-md5 dodos on every run; the real nvidia-smi on "
         "the lent H200 answered it in 0.02 s).", "",
         "| fleet | engines | checkpoints | ours `doit` | ours `doit plan --json` | ours, dodo.py "
         "| doit-md5 per engine | doit-md5 per model | `dvc status` | per engine / ours | per model / ours "
         "| dvc / ours | peak RSS MiB: ours doit / plan / md5 / md5m / dvc |",
         "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for shape, r in rows:
        dv = r.get("dvc")
        o = r["doit"]["wall"]
        kind = "half blocked" if shape["blocked"] else "all buildable"
        dvc_wall, dvc_ratio, dvc_rss = (fmt_s(dv["wall"]), f"{dv['wall'] / o:.1f}×", f"{dv['rss']:.0f}") if dv \
            else ("n/a", "n/a", "n/a")
        L.append(f"| {kind} | {shape['engines']:,} | {shape['bytes'] / 1e9:.1f} GB | **{fmt_s(o)}** "
                 f"| {fmt_s(r['plan']['wall'])} | {fmt_s(r['dodo']['wall'])} | {fmt_s(r['md5']['wall'])} "
                 f"| {fmt_s(r['md5m']['wall'])} "
                 f"| {dvc_wall} | {r['md5']['wall'] / o:.2f}× | {r['md5m']['wall'] / o:.2f}× | {dvc_ratio} "
                 f"| {r['doit']['rss']:.0f} / {r['plan']['rss']:.0f} / {r['md5']['rss']:.0f} / {r['md5m']['rss']:.0f}"
                 f" / {dvc_rss} |")
    ts = t["shape"]
    L += ["", "Ratios above 1: we are faster.", "",
          f"After `touch` on every shard ({ts['engines']:,} engines, {ts['models']} models × {ts['shards']} shards of "
          f"{ts['shard_bytes'] / MiB:.0f} MiB, sparse): our first run re-hashes each touched file once and refreshes "
          "its stat cache; doit's md5 checker re-hashes every file_dep of every task whose mtime changed (per engine: "
          "each shard once per engine that lists it) and, as its database keeps the old mtime while the md5 matches, "
          "on every later run too (doit PR #431).", "",
          "| | ours | doit-md5 per engine | doit-md5 per model | per engine / ours | per model / ours |",
          "|---|---:|---:|---:|---:|---:|"]
    for label, k in (("run after touch", ""), ("the run after that", "_after")):
        o = t["ours" + k]["wall"]
        L.append(f"| {label} | {fmt_s(o)} | {fmt_s(t['md5' + k]['wall'])} | {fmt_s(t['md5m' + k]['wall'])} "
                 f"| {t['md5' + k]['wall'] / o:.1f}× | {t['md5m' + k]['wall'] / o:.1f}× |")
    L.append(f"| peak RSS | {t['ours']['rss']:.0f} MiB | {t['md5']['rss']:.0f} MiB | {t['md5m']['rss']:.0f} MiB | | |")
    ram = cold["ram_bytes"] / 2**30
    L += ["", f"Cold hashing: {cold['bytes'] / 2**30:.1f} GiB of random data in {cold['files']} real files "
          f"({'more' if cold['bytes'] > cold['ram_bytes'] else 'less'} than the {ram:.0f} GiB of RAM), page cache "
          f"dropped ({cold.get('drop', 'n/a')}) before every pass; cached: the first "
          f"{cold['cached_bytes'] / 2**30:.1f} GiB, read once before each pass. Plain read = every byte into an 8 MiB "
          f"buffer, by one reader, and by {cold['threads']} readers taking files from one list (the thread count and "
          "buffer size of digest_files: the physical limit of this disk for the same access pattern). Ours = "
          f"digest_files (xxh3-128, no stat cache). Median of {res.get('cold_runs', res['runs'])} runs each, readers "
          "alternating order. Target: ours ≥ 0.85 of the parallel plain read.", "",
          f"| page cache | plain, 1 reader | plain, {cold['threads']} readers | ours (hash) | ours / plain "
          f"{cold['threads']} readers | ours / plain 1 reader |", "|---|---:|---:|---:|---:|---:|"]
    for mode in ("cached", "cold"):
        c = cold[mode]
        L.append(f"| {mode} | {c['plain1']:.2f} GB/s | {c['plain']:.2f} GB/s | {c['ours']:.2f} GB/s "
                 f"| **{c['ours'] / c['plain']:.2f}** | {c['ours'] / c['plain1']:.2f} |")
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
