"""Store restore benchmark: pull (hash-while-writing, verified) vs. a plain copy, for DirStore and moto S3.

    python bench/store_bench.py [--size-gb 2] [--files 4] [--runs 3] [--dir /tmp]

Builds a multi-GB engine dir, pushes it to a DirStore and to a moto S3 server (its own
process on a free loopback port), then times, in fresh child processes (each reports its
own peak RSS), alternating order, median of --runs, page cache warm:
- dir: DirStore.pull vs. shutil.copyfile of the same stored files, on 4 threads (and one after another);
- s3:  S3Store.pull vs. boto3 download_file of the same objects, same TransferConfig, all files at once
  (and one after another).
Writes a Markdown table to bench/results/store.md (target: pull/baseline >= 0.80).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from buildlib.core.key import key_of  # noqa: E402
from buildlib.core.manifest import Manifest, record_outputs, write_manifest  # noqa: E402
from buildlib.store.dir import DirStore  # noqa: E402
from buildlib.store.s3 import S3Store  # noqa: E402

MiB = 1 << 20
FIELDS = {"bench": True}
KEY = key_of(FIELDS)  # a store entry is used only if its manifest's fields hash to its key
BUCKET = "store-bench"


# -- children: one timed operation each, reporting seconds, bytes and peak RSS ----------------

def _s3(spec: dict[str, Any]) -> S3Store:
    part = spec["part_mib"] * MiB
    return S3Store(BUCKET, "bench", endpoint=spec["endpoint"], part_size=part, download_part_size=part)


def child(spec: dict[str, Any]) -> None:
    op, dest = spec["op"], Path(spec.get("dest", "."))
    store_dir = Path(spec["store_dir"]) if "store_dir" in spec else None
    t0 = time.perf_counter()
    if op == "dir-push":
        assert store_dir
        DirStore(store_dir).push(KEY, Path(spec["src"]))
    elif op == "dir-pull":
        assert store_dir
        DirStore(store_dir).pull(KEY, dest)
    elif op == "dir-copy":  # baseline: the same files, plain copies (sendfile), no hashing
        assert store_dir
        parallel(spec, lambda rel: shutil.copyfile(store_dir / KEY / rel, dest / rel))
    elif op == "s3-push":
        _s3(spec).push(KEY, Path(spec["src"]))
    elif op == "s3-pull":
        _s3(spec).pull(KEY, dest)
    elif op == "s3-download":  # baseline: boto3 download_file of the same objects, no hashing
        s = _s3(spec)
        parallel(spec, lambda rel: s.client.download_file(BUCKET, f"{spec['base']}{rel}", str(dest / rel),
                                                          Config=s.download_config))
    else:
        raise SystemExit(f"unknown op {op}")
    seconds = time.perf_counter() - t0
    print(json.dumps({"seconds": seconds, "maxrss_mib": peak_rss_mib()}))


def parallel(spec: dict[str, Any], copy: Any) -> None:
    """copy(rel) for each file: one after another (threads 1), or on `threads` threads, as a fair script would."""
    threads = spec.get("threads", 1)
    if threads == 1:
        for rel in spec["files"]:
            copy(rel)
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(copy, spec["files"]))


def peak_rss_mib() -> float:
    """This process's peak RSS. VmHWM, not ru_maxrss: Linux carries ru_maxrss over fork+exec, so a
    child would report at least the parent's RSS; VmHWM belongs to the exec'd image alone."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_child(spec: dict[str, Any], script: str = __file__) -> dict[str, Any]:
    """`script --child SPEC` in a fresh interpreter (its own page-cache-warm, import-cold process); its last line."""
    r = subprocess.run([sys.executable, script, "--child", json.dumps(spec)], capture_output=True, text=True,
                       cwd=REPO)
    if r.returncode != 0:
        raise SystemExit(f"{spec['op']} failed:\n{r.stderr}")
    return json.loads(r.stdout.strip().splitlines()[-1])


# -- setup ---------------------------------------------------------------------------------------

def make_engine(d: Path, total: int, n_files: int) -> list[str]:
    """n rank files of total/n bytes: one 64 MiB random block, each copy salted with its position."""
    d.mkdir(parents=True)
    block = bytearray(os.urandom(64 * MiB))
    per = total // n_files
    names = []
    for i in range(n_files):
        name = f"rank{i}.engine"
        with open(d / name, "wb") as f:
            left, j = per, 0
            while left:
                block[:16] = (i * 1_000_003 + j).to_bytes(16, "little")
                n = min(left, len(block))
                f.write(memoryview(block)[:n])
                left, j = left - n, j + 1
        names.append(name)
    (d / "config.json").write_text('{"version": "bench"}\n')
    (d / "build.log").write_text("bench\n")
    write_manifest(d, Manifest(KEY, FIELDS, record_outputs(d, None), name="bench"))  # hashes: cache warm
    return names


def start_moto() -> tuple[subprocess.Popen, str]:
    for _ in range(3):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(600):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return proc, f"http://127.0.0.1:{port}"
            except OSError:
                try:
                    proc.wait(timeout=0.05)  # the poll interval, and notices an early exit
                    break
                except subprocess.TimeoutExpired:
                    pass
        proc.kill()
        proc.wait()
    raise SystemExit("moto server did not start (pip install 'moto[server]')")


def fresh(dest: Path) -> Path:
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    os.sync()  # flush the previous run's writes outside the timed region
    return dest


def measure(pairs: list[tuple[str, dict[str, Any]]], dest: Path, runs: int) -> dict[str, list[dict[str, Any]]]:
    """Alternate baseline and pull each run (ABBA...) so drift in the box's write speed hits both."""
    out: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in pairs}
    for r in range(runs):
        for name, spec in pairs if r % 2 == 0 else pairs[::-1]:
            out[name].append(run_child({**spec, "dest": str(fresh(dest))}))
    return out


def row(label: str, size: int, got: list[dict[str, Any]], base: float | None) -> tuple[str, float]:
    secs = statistics.median(g["seconds"] for g in got)
    mbs = size / MiB / secs
    rss = max(g["maxrss_mib"] for g in got)
    ratio = f"{mbs / base:.2f}" if base else "1.00"
    runs = ", ".join(f"{size / MiB / g['seconds']:.0f}" for g in got)
    return f"| {label} | {mbs:,.0f} | {ratio} | {rss:.0f} | {runs} |", mbs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-gb", type=float, default=2.0)
    ap.add_argument("--files", type=int, default=4)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--dir", default=None, help="where to put the engine and the stores (default: /tmp)")
    ap.add_argument("--dest", default=None,
                    help="where restores are written (default: /dev/shm if present, see notes; else --dir)")
    ap.add_argument("--s3-part-mib", type=int, default=0,
                    help="S3 part size for push and pull (default: above the file size, see notes)")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "store.md"))
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(json.loads(args.child))

    t_start = time.perf_counter()
    size = int(args.size_gb * (1 << 30)) // args.files * args.files
    work = Path(tempfile.mkdtemp(prefix="store-bench-", dir=args.dir))
    part_mib = args.s3_part_mib or (size // args.files // MiB + 1)
    moto = None
    try:
        src = work / "engine"
        print(f"writing a {size / (1 << 30):.2f} GiB engine ({args.files} files) in {src}", flush=True)
        names = make_engine(src, size, args.files)
        outputs = [*names, "config.json"]
        dest_root = args.dest or ("/dev/shm" if Path("/dev/shm").is_dir() else None)
        dest = Path(tempfile.mkdtemp(prefix="store-bench-restore-", dir=dest_root or work))
        lines: list[str] = []

        dir_store = work / "dirstore"
        dir_store.mkdir()
        push_dir = run_child({"op": "dir-push", "src": str(src), "store_dir": str(dir_store)})
        dspec = {"store_dir": str(dir_store), "files": outputs}
        run_child({**dspec, "op": "dir-copy", "dest": str(fresh(dest))})  # warm-up, untimed
        print("dir: timing", flush=True)
        got = measure([("copy", {**dspec, "op": "dir-copy"}), ("pcopy", {**dspec, "op": "dir-copy", "threads": 4}),
                       ("pull", {**dspec, "op": "dir-pull"})], dest, args.runs)
        base_line, base = row("dir: shutil.copyfile on 4 threads (baseline)", size, got["pcopy"], None)
        serial_line, _ = row("dir: shutil.copyfile, one file after another", size, got["copy"], base)
        pull_line, _ = row("dir: DirStore.pull (verified)", size, got["pull"], base)
        lines += [serial_line, base_line, pull_line]

        moto, endpoint = start_moto()
        os.environ.update({"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                           "AWS_DEFAULT_REGION": "us-east-1"})
        sspec = {"endpoint": endpoint, "part_mib": part_mib}
        s3 = _s3(sspec)
        s3.client.create_bucket(Bucket=BUCKET)
        print("s3: pushing to moto", flush=True)
        push_s3 = run_child({**sspec, "op": "s3-push", "src": str(src)})
        ref = json.loads(s3.client.get_object(Bucket=BUCKET, Key=f"bench/{KEY}/ref.json")["Body"].read())
        sspec.update(base=f"bench/{KEY}/{ref['upload']}/", files=outputs)
        run_child({**sspec, "op": "s3-download", "dest": str(fresh(dest))})  # warm-up, untimed
        print("s3: timing", flush=True)
        got = measure([("download", {**sspec, "op": "s3-download"}),
                       ("pdownload", {**sspec, "op": "s3-download", "threads": args.files + 1}),
                       ("pull", {**sspec, "op": "s3-pull"})], dest, args.runs)
        base_line, base = row(f"s3 (moto): boto3 download_file on {args.files + 1} threads (baseline)", size,
                              got["pdownload"], None)
        serial_line, _ = row("s3 (moto): boto3 download_file, one file after another", size, got["download"], base)
        pull_line, _ = row("s3 (moto): S3Store.pull (verified)", size, got["pull"], base)
        lines += [serial_line, base_line, pull_line]
    finally:
        if moto is not None:
            moto.terminate()
            moto.wait()
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(dest, ignore_errors=True)

    import boto3
    import moto as moto_pkg

    cmd = "python bench/store_bench.py " + " ".join(sys.argv[1:])
    table = "\n".join([
        f"Restore of a {size / (1 << 30):.2f} GiB engine ({args.files} rank files + config.json), "
        f"median of {args.runs} runs, page cache warm, each run a fresh child process.",
        "",
        "| restore | MiB/s | vs baseline | peak RSS MiB | runs MiB/s |",
        "|---|---:|---:|---:|---:|",
        *lines,
        "",
        f"Push (one run, includes fsync for dir): dir {size / MiB / push_dir['seconds']:,.0f} MiB/s "
        f"(peak RSS {push_dir['maxrss_mib']:.0f} MiB); s3 (moto) {size / MiB / push_s3['seconds']:,.0f} MiB/s "
        f"(peak RSS {push_s3['maxrss_mib']:.0f} MiB).",
    ])
    print("\n" + table)
    elapsed = time.perf_counter() - t_start
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(f"""# Shared engine store: restore throughput

`{cmd.strip()}` ({elapsed:.0f} s) on {platform.node()}: {os.cpu_count()} CPUs, Linux {platform.release()},
Python {platform.python_version()}, boto3 {boto3.__version__}, moto {moto_pkg.__version__};
engine and stores under {args.dir or tempfile.gettempdir()}, restores written to {dest.parent}.
Target: pull / baseline >= 0.80.

{table}

Notes
- The pull reads every byte once, hashes it (xxh3-128) and writes it from the same buffer,
  and checks each file against manifest.json; the baselines neither hash nor verify.
- Both pulls overlap files (dir: up to 4 copy threads; s3: all files submitted to one
  transfer manager). So does the baseline each is measured against: the same copies on 4 threads
  (dir) or one download_file per file, all at once (s3); the one-after-another rows are what a
  plain loop gets, for scale.
- S3 part size here is {part_mib} MiB, above the file size, for push, pull and baseline alike:
  moto answers every ranged GET by copying the whole object, so multipart ranged downloads
  measure moto, not us (64 MiB parts: ~70 MiB/s for either). Against AWS S3 the store's
  defaults (64 MiB upload parts, 16 MiB ranged GETs, 4 in flight) apply.
- Peak RSS is the child process's VmHWM (interpreter and imports included; ru_maxrss would
  inherit the parent's peak across fork+exec).
- Restores go to tmpfs by default: this box's ext4 is mounted with online `discard`, so
  deleting the previous run's 2 GB makes the next run's writes stall behind discards at
  random (the same copy measured 0.5-4.6 GB/s there); tmpfs leaves the cost of our code.
  `--dest /tmp` measures the disk instead.
""")
    print(f"\nwrote {args.out} ({elapsed:.0f} s)")


if __name__ == "__main__":
    main()
