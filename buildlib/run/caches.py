"""Warm build caches through the store: TensorRT's timing cache, Inductor's caches.

A cache is not part of any key (it changes how long a build takes, never what a correct build makes), but a cold
one costs a fresh CI runner minutes (TensorRT issues #1841, #2144). So a build with a store configured fetches the
cache for its GPU name or CPU ISA and toolchain version (Runner.build_cache) when it has none locally, and a build
that ran pushes its cache back:

    <store>/[.signers/<identity>/].caches/<timing|inductor>/<name>.tar.gz   (and .sig where the run signs)

Last writer wins: every push replaces the whole archive (a build's cache holds what the ones before it held, as it
started from them), and a reader gets one archive whole. A cache holds code builders run (Inductor's compiled
kernels), so it is an input, not trust: under a trust policy only a trusted signer's archive is used, its signature
checked like an entry's (buildlib.store.guarded); archives are unpacked with tarfile's `data` filter (no links out,
no absolute paths, no devices). A missing, refused or corrupt cache is said in one line and the build runs cold: a
cache never fails a build. Archives over MAX_BYTES are not shared.
"""

from __future__ import annotations

import io
import os
import shutil
import tarfile
import time
from pathlib import Path

from ..host.publish import aside_path, remove_aside
from ..store.base import StoreError
from ..store.guarded import GuardedStore
from ..store.signing import SigningUnavailable

CACHES = ".caches"
MAX_BYTES = 512 << 20
FAILURES = (StoreError, SigningUnavailable, OSError, tarfile.TarError, EOFError, ValueError)


def _note(name: str) -> str:
    return f"{CACHES}/{name}.tar.gz"


def _empty(path: Path) -> bool:
    return not path.exists() or (path.is_dir() and not any(path.iterdir()))


def warm(store: GuardedStore, name: str, path: Path) -> str:
    """Fetch the shared cache `name` into `path` when there is none here; what happened, in a few words."""
    if not _empty(path):
        return "warm here"
    t0 = time.monotonic()
    try:
        data, why = None, "none in the store"
        for v, scope in store.record_sources():
            data, refused = store.read_record(v, scope, _note(name))
            if data is not None and refused is None:
                break
            if data is not None:
                why, data = f"refused ({refused})", None
        if data is None:
            return why
        tmp = path.with_name(f".{path.name}.tmp-{os.urandom(4).hex()}")
        try:
            with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
                tar.extractall(tmp, filter="data")
            inner = tmp / "cache"
            if not inner.exists():
                return "refused (not a cache archive)"
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.exists():
                os.rename(path, aside_path(path))  # an empty dir or file, set aside and removed below
            os.rename(inner, path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            remove_aside(path)
        return f"fetched {len(data) / (1 << 20):.1f} MiB in {time.monotonic() - t0:.1f}s"
    except FAILURES as e:
        return f"not used ({type(e).__name__}: {e})"


def fingerprint(path: Path) -> tuple[int, int, int]:
    """(files, bytes, newest mtime) of a cache: a build that added nothing to it pushes nothing."""
    if path.is_file():
        st = path.stat()
        return 1, st.st_size, st.st_mtime_ns
    n = size = newest = 0
    for dirpath, _, files in os.walk(path):
        for f in files:
            try:
                st = os.lstat(os.path.join(dirpath, f))
            except OSError:
                continue
            n, size, newest = n + 1, size + st.st_size, max(newest, st.st_mtime_ns)
    return n, size, newest


def share(store: GuardedStore, name: str, path: Path, before: tuple[int, int, int] | None = None) -> str:
    """Push the local cache `name` after a build ran, unless the build left it as it was (`before`); what
    happened, in a few words."""
    if not store.writable:
        return "not shared (the store is read-only for this run)"
    if _empty(path):
        return "nothing to share"
    if before is not None and fingerprint(path) == before:
        return "unchanged, not shared again"
    try:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=1) as tar:
            tar.add(path, arcname="cache", filter=_regular)
        if buf.tell() > MAX_BYTES:
            return f"not shared ({buf.tell() >> 20} MiB, over {MAX_BYTES >> 20} MiB)"
        store.put_record(_note(name), buf.getvalue())
        return f"shared {buf.tell() / (1 << 20):.1f} MiB"
    except FAILURES as e:
        return f"not shared ({type(e).__name__}: {e})"


def _regular(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
    """Files and dirs only: a link or a lock file in a cache dir is not shared."""
    return info if info.isreg() or info.isdir() else None
