"""Restore with a trust policy against without (#26): what checking the signature costs a 1 GiB restore.

    python bench/trust_bench.py [--size-gb 1] [--files 4] [--runs 5] [--dir /tmp]

One signed entry (OpenSSF Model Signing, a real EC key) of a --size-gb engine in a directory store and in a moto
S3 server; in fresh child processes, alternating order, median of --runs, page cache warm, each restores it through
the store as a run uses it (buildlib.store.guarded.GuardedStore.pull): once with the policy (pull, then the
signature checked over every file, the model-signing import included) and once without (pull only, as before).
Goal: throughput with verification >= 0.7 of without. Writes bench/results/trust.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO))

from store_bench import BUCKET, KEY, MiB, fresh, make_engine, peak_rss_mib, run_child, start_moto  # noqa: E402

from buildlib.store.dir import DirStore  # noqa: E402
from buildlib.store.guarded import GuardedStore  # noqa: E402
from buildlib.store.s3 import S3Store  # noqa: E402
from buildlib.store.settings import StoreSettings  # noqa: E402


def store_of(spec: dict[str, Any]) -> GuardedStore:
    inner = DirStore(Path(spec["store"])) if spec["kind"] == "dir" else \
        S3Store(BUCKET, "bench", endpoint=spec["endpoint"])
    trust = ((("key", spec["pub"]),),) if spec.get("trust") else ()
    sign = (("key", spec["key"]),) if spec.get("sign") else ()
    return GuardedStore(inner, StoreSettings(inner.url, True, sign, trust))


def child(spec: dict[str, Any]) -> None:
    t0 = time.perf_counter()
    if spec["op"] == "push":
        store_of(spec).push(KEY, Path(spec["src"]))
    else:
        store_of(spec).pull(KEY, Path(spec["dest"]))
    print(json.dumps({"seconds": time.perf_counter() - t0, "maxrss_mib": peak_rss_mib()}))


def keypair(d: Path) -> tuple[str, str]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    (d / "k.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                serialization.NoEncryption()))
    (d / "k.pub").write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                            serialization.PublicFormat.SubjectPublicKeyInfo))
    return str(d / "k.pem"), str(d / "k.pub")


def arguments(doc: str | None) -> argparse.Namespace:
    """The options this bench and bench/fetch_bench.py share."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-gb", type=float, default=1.0)
    ap.add_argument("--files", type=int, default=4)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--dir", default=None)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    return ap.parse_args()


def setup(a: argparse.Namespace, prefix: str) -> tuple[Path, int, str, str, list[str]]:
    """A work dir with a signing key pair, an engine of --size-gb in --files rank files, an empty store dir:
    (work, size, private key, public key, the engine's output names)."""
    work = Path(tempfile.mkdtemp(prefix=prefix, dir=a.dir))
    size = int(a.size_gb * 1024) * MiB
    key, pub = keypair(work)
    names = [*make_engine(work / "engine", size, a.files), "config.json"]
    (work / "store").mkdir()
    return work, size, key, pub, names


def main() -> None:
    a = arguments(__doc__)
    if a.child:
        return child(json.loads(a.child))
    work, size, key, pub, _ = setup(a, "trust-bench-")
    moto, endpoint = start_moto()
    try:
        import boto3

        os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
        os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
        os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=BUCKET)
        base = {"key": key, "pub": pub, "endpoint": endpoint, "store": str(work / "store")}
        results: dict[str, dict[str, list[dict[str, Any]]]] = {}
        for kind in ("dir", "s3"):
            run_child({**base, "kind": kind, "op": "push", "sign": True, "src": str(work / "engine")}, __file__)
            pairs = [("without", {**base, "kind": kind, "op": "pull"}),
                     ("with", {**base, "kind": kind, "op": "pull", "trust": True})]
            got: dict[str, list[dict[str, Any]]] = {"without": [], "with": []}
            for r in range(a.runs):
                for name, spec in pairs if r % 2 == 0 else pairs[::-1]:
                    got[name].append(run_child({**spec, "dest": str(fresh(work / "dest"))}, __file__))
            results[kind] = got
    finally:
        moto.terminate()
        moto.wait()
        shutil.rmtree(work, ignore_errors=True)
    print("| store | without a policy (MB/s) | with (MB/s) | with / without | peak RSS with (MiB) |\n"
          "|---|---|---|---|---|")
    summary = {}
    for kind, got in results.items():
        mbs = {n: size / MiB / statistics.median(g["seconds"] for g in runs) for n, runs in got.items()}
        summary[kind] = {"mb_s": mbs, "ratio": mbs["with"] / mbs["without"],
                         "runs": {n: [round(g["seconds"], 3) for g in runs] for n, runs in got.items()}}
        print(f"| {kind} | {mbs['without']:,.0f} | {mbs['with']:,.0f} | {mbs['with'] / mbs['without']:.2f} | "
              f"{max(g['maxrss_mib'] for g in got['with']):.0f} |")
    (REPO / "bench/results/trust.json").write_text(json.dumps({"size_bytes": size, "files": a.files, "runs": a.runs,
                                                               "results": summary}, indent=1) + "\n")


if __name__ == "__main__":
    main()
