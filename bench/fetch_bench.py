"""`enginebuild fetch` of a 1 GiB engine against a plain parallel copy of the same files (#27).

    python bench/fetch_bench.py [--size-gb 1] [--files 4] [--runs 5] [--dir /tmp]

One engine signed (a real EC key) and released to a channel, in a directory store and in a moto S3 server; then, in
fresh processes, alternating order, median of --runs, page cache warm, into a fresh DEST each time:
- fetch:   the `enginebuild fetch --trust PEM` console script as a node runs it: the node's GPUs read, the release
           record read and its signature checked, the engine pulled and every byte hashed against its manifest,
           the signature checked over every file, fsync, rename, `current` swapped;
- baseline: the same files copied in parallel, no check: shutil.copyfile on 4 threads from the directory store's
           entry; boto3 download_file of each object at once from S3 (the store's own transfer settings).
Both are timed from outside, as whole processes (a node runs fetch as one); the copy's own time inside its process
is kept too (`inside_seconds`). Goal: fetch throughput >= 0.8 of the baseline. Writes bench/results/fetch.json and
prints a Markdown table.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO))

from store_bench import BUCKET, KEY, MiB, fresh, peak_rss_mib, start_moto  # noqa: E402
from trust_bench import arguments, setup  # noqa: E402

from buildlib.host.isa import host_isa  # noqa: E402
from buildlib.store.channel import Release, new_id, record  # noqa: E402
from buildlib.store.dir import DirStore  # noqa: E402
from buildlib.store.guarded import GuardedStore  # noqa: E402
from buildlib.store.s3 import S3Store  # noqa: E402
from buildlib.store.settings import StoreSettings  # noqa: E402

ENGINEBUILD = str(Path(sys.executable).with_name("enginebuild"))


def inner(spec: dict[str, Any]) -> DirStore | S3Store:
    return DirStore(Path(spec["store"])) if spec["kind"] == "dir" else S3Store(BUCKET, "bench",
                                                                               endpoint=spec["endpoint"])


def publish(spec: dict[str, Any], src: Path, size: int) -> str:
    """Push `src` signed and release it to channel `bench` as the one engine of model `bench` (arch: this CPU)."""
    s = inner(spec)
    store = GuardedStore(s, StoreSettings(s.url, True, (("key", spec["key"]),), ()))
    assert store.push(KEY, src)
    engine = {"engine": f"bench/{host_isa()}/tp1-pp1", "arch": host_isa(), "gpu_name": None, "tp": 1, "pp": 1,
              "gpus": 1, "backend": "aoti", "key": KEY, "size": size, "signer": None, "validated": []}
    record(store, Release("bench", "bench", new_id(), "2026-12-06T00:00:00Z", {}, None, (engine,)))
    return s.url if spec["kind"] == "dir" else f"s3://{BUCKET}/bench"


def child(spec: dict[str, Any]) -> None:
    dest = Path(spec["dest"])
    names = spec["files"]
    t0 = time.perf_counter()
    if spec["kind"] == "dir":
        entry = Path(spec["store"]) / ".signers" / spec["ident"] / KEY
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda n: shutil.copyfile(entry / n, dest / n), names))
    else:
        s3 = S3Store(BUCKET, "bench", endpoint=spec["endpoint"])
        ref = json.loads(s3.client.get_object(Bucket=BUCKET, Key=f"{spec['prefix']}/{KEY}/ref.json")["Body"].read())
        base = f"{spec['prefix']}/{KEY}/{ref['upload']}/"
        with ThreadPoolExecutor(len(names)) as pool:
            list(pool.map(lambda n: s3.client.download_file(BUCKET, base + n, str(dest / n),
                                                            Config=s3.download_config), names))
    print(json.dumps({"seconds": time.perf_counter() - t0, "maxrss_mib": peak_rss_mib()}))


def timed(spec: dict[str, Any], env: dict[str, str]) -> dict[str, Any]:
    if spec["op"] == "fetch":
        t0 = time.perf_counter()
        r = subprocess.run([ENGINEBUILD, "fetch", "--store", spec["url"], "--channel", "bench", "--model", "bench",
                            "--dest", spec["dest"], "--trust", spec["pub"]], capture_output=True, text=True, env=env)
        secs = time.perf_counter() - t0
        if r.returncode != 0 or "fetched" not in r.stdout:
            raise SystemExit(f"fetch failed:\n{r.stdout}{r.stderr}")
        return {"seconds": secs}
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True,
                       cwd=REPO, env=env)
    secs = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"copy failed:\n{r.stderr}")
    return {**json.loads(r.stdout.strip().splitlines()[-1]), "seconds": secs, "inside_seconds":
            json.loads(r.stdout.strip().splitlines()[-1])["seconds"]}


def main() -> None:
    a = arguments(__doc__)
    if a.child:
        return child(json.loads(a.child))
    from buildlib.store.signing import key_identity

    work, size, key, pub, names = setup(a, "fetch-bench-")
    os.environ.update({"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                       "AWS_DEFAULT_REGION": "us-east-1"})
    moto, endpoint = start_moto()
    results: dict[str, Any] = {}
    try:
        import boto3

        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=BUCKET)
        env = {**os.environ, "BUILDLIB_S3_ENDPOINT": endpoint, "PATH": os.environ.get("PATH", "")}
        for kind in ("dir", "s3"):
            spec = {"kind": kind, "key": key, "store": str(work / "store"), "endpoint": endpoint}
            url = publish(spec, work / "engine", size)
            dest = work / "dest"
            pairs = [("baseline", {**spec, "op": "copy", "files": names, "ident": key_identity(Path(pub)),
                                   "prefix": f"bench/.signers/{key_identity(Path(pub))}"}),
                     ("fetch", {"op": "fetch", "url": url, "pub": pub})]
            got: dict[str, list[dict[str, Any]]] = {"baseline": [], "fetch": []}
            for r in range(a.runs):
                for name, s in pairs if r % 2 == 0 else pairs[::-1]:
                    d = fresh(dest)
                    got[name].append(timed({**s, "dest": str(d / "node") if name == "fetch" else str(d)}, env))
            mbs = {n: size / MiB / statistics.median(g["seconds"] for g in runs) for n, runs in got.items()}
            results[kind] = {"mb_s": mbs, "ratio": mbs["fetch"] / mbs["baseline"],
                             "runs_s": {n: [round(g["seconds"], 3) for g in runs] for n, runs in got.items()}}
    finally:
        moto.terminate()
        moto.wait()
        shutil.rmtree(work, ignore_errors=True)
    print("| store | plain parallel copy (MB/s) | enginebuild fetch --trust (MB/s) | fetch / copy |\n|---|---|---|---|")
    for kind, r in results.items():
        print(f"| {kind} | {r['mb_s']['baseline']:,.0f} | {r['mb_s']['fetch']:,.0f} | {r['ratio']:.2f} |")
    (REPO / "bench/results/fetch.json").write_text(json.dumps({"size_bytes": size, "files": a.files, "runs": a.runs,
                                                               "results": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
