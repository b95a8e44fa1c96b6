"""`enginebuild`: the console script a serving node runs, with no checkout, checkpoint, torch or doit.

    enginebuild fetch --store URL --channel prod --model llama-3-8b --dest /models/llama-3-8b [--trust PEM]
                      [--tp N] [--pp M] [--keep N] [--list]

Exit 0 with what it chose and why; exit 2 with one line when nothing fits this node, or a record or entry is
refused, or the input is wrong. Imports stay light (argparse, the store, the node's GPUs): a container entry point
pays for nothing else.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..core.errors import EXIT_USAGE, UserError
from ..host.node import Node, read_node
from ..rollout.fetch import fetch, serving
from ..rollout.fit import choose
from ..store.guarded import GuardedStore
from ..store.open import open_store
from ..store.settings import ENV_TRUST, StoreSettings
from ..store.signing import preload


def _store(url: str, trust: list[str]) -> GuardedStore:
    keys = trust or [p for p in os.environ.get(ENV_TRUST, "").split(os.pathsep) if p]
    for k in keys:
        if not Path(k).is_file():
            raise UserError(f"--trust {k}: not a file (a PEM public key)")
    policy = tuple((("key", str(Path(k).absolute())),) for k in keys)
    if policy:
        preload()  # model-signing's 0.35 s import, overlapped with reading the node and the release
    return GuardedStore(open_store(url, Path.cwd()), StoreSettings(url, False, (), policy))


def _size(n: object) -> str:
    return f"{n / (1 << 30):.2f} GiB" if isinstance(n, int) else "size unknown"


def _list(store: GuardedStore, a: argparse.Namespace, node: Node) -> int:
    rel = serving(store, a.channel, a.model)
    chosen, fits = choose(rel.engines, node, a.tp, a.pp)
    who = f"signed by {rel.signer}" if rel.signer else "not authenticated (no --trust)"
    print(f"{a.channel} {a.model}: release {rel.id} ({who}), {len(rel.engines)} engine(s); this node: "
          f"{node.describe()}, CPU {node.cpu_isa} [{node.source}]")
    for f in fits:
        mark = "chosen" if f is chosen else ("fits" if f.ok else "no")
        print(f"  {mark:<6} {f.engine['engine']}  {f.why}")
    return 0


def _fetch(store: GuardedStore, a: argparse.Namespace, node: Node) -> int:
    got = fetch(store, a.channel, a.model, Path(a.dest).absolute(), node, a.tp, a.pp, a.keep)
    e = got.chosen.engine
    if not got.transferred and not got.swapped:
        print(f"up to date: {a.dest}/current is {e['engine']} ({e['key']}), release {got.release.id} of "
              f"{a.channel}; nothing transferred")
        return 0
    how = f"fetched {_size(e.get('size'))}" if got.transferred else "already here, nothing transferred"
    print(f"{e['engine']}: {got.chosen.why}\n{how}; {a.dest}/current -> {e['key']} (release {got.release.id} "
          f"of {a.channel}" + (f", signed by {got.release.signer})" if got.release.signer else ")"))
    return 0


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="enginebuild", description="Serving-node side of enginebuild.")
    sub = ap.add_subparsers(dest="command", required=True)
    f = sub.add_parser("fetch", help="fetch the engine a channel's release has for this node's GPUs",
                       description="Pick the engine of the channel's release that fits this node (exact GPU name "
                                   "before arch; the most GPUs that fit; tp before pp), pull it verified into "
                                   "DEST/<key>/ and point DEST/current at it atomically.")
    f.add_argument("--store", required=True, help="the store: a path, file:///path or s3://bucket/prefix")
    f.add_argument("--channel", required=True, help="the release channel (canary, prod, ...)")
    f.add_argument("--model", required=True, help="the model's name in models.yaml")
    f.add_argument("--dest", help="where engines go: DEST/<key>/ and the symlink DEST/current")
    f.add_argument("--trust", action="append", default=[], metavar="PEM",
                   help=f"a public key whose signature records and engines must carry (repeatable; default "
                        f"${ENV_TRUST}); without one, nothing is authenticated")
    f.add_argument("--tp", type=int, help="only an engine of this tensor-parallel size")
    f.add_argument("--pp", type=int, help="only an engine of this pipeline-parallel size")
    f.add_argument("--keep", type=int, default=2, help="engines kept under DEST, the current one included "
                                                       "[default: 2, the previous one stays]")
    f.add_argument("--list", action="store_true", help="list every engine of the release and why it fits or not")
    return ap


def main(argv: list[str] | None = None) -> int:
    a = parser().parse_args(argv)
    try:
        if not a.list and not a.dest:
            raise UserError("enginebuild fetch: --dest DIR is required (or --list to only see the choice)")
        store = _store(a.store, a.trust)
        if not store.verifiers:
            print("warning: no --trust key: the release and the engine are checked for integrity only, not for who "
                  "made them", file=sys.stderr)
        node = read_node()
        return _list(store, a, node) if a.list else _fetch(store, a, node)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
