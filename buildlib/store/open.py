"""A store from a URL: a directory path, `file:///path` or `s3://bucket/prefix`; and the one a run is configured
with (BUILDLIB_STORE, else models.yaml `store:`)."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import unquote, urlparse

from ..core.model import Project
from ..host.confine import refusal
from .base import ENV_S3_ENDPOINT, ENV_STORE, Store, StoreError
from .guarded import GuardedStore
from .settings import StoreSettings, store_settings


def open_store(url: str, work_dir: Path) -> Store:
    """A store from a URL: `/abs/path`, `relative/path` (to the cwd), `file:///abs/path`, `s3://bucket/prefix`.

    S3: endpoint from BUILDLIB_S3_ENDPOINT or AWS_ENDPOINT_URL (unset: AWS), credentials
    from the standard AWS chain (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, ...).
    `work_dir` is the project's work dir, reserved for local store state; nothing is kept there yet.
    """
    del work_dir
    raw = url.strip()
    if not raw:
        raise StoreError(f"empty store URL; set `store:` in models.yaml or {ENV_STORE} to a path or s3://bucket/prefix")
    scheme = raw.split("://", 1)[0].lower() if "://" in raw else ""
    if scheme == "s3":
        p = urlparse(raw)
        if not p.netloc:
            raise StoreError(f"store URL {raw!r} names no bucket; write s3://<bucket>/<prefix>")
        endpoint = os.environ.get(ENV_S3_ENDPOINT) or os.environ.get("AWS_ENDPOINT_URL") or None
        from .s3 import S3Store  # boto3 only for an s3:// store

        return S3Store(p.netloc, unquote(p.path), endpoint=endpoint)
    if scheme == "file":
        p = urlparse(raw)
        if p.netloc not in ("", "localhost"):
            raise StoreError(f"store URL {raw!r} names host {p.netloc!r}; write file:///abs/path "
                             "(mount the share and give its local path)")
        root = Path(unquote(p.path))
    elif scheme:
        raise StoreError(f"store URL {raw!r}: unsupported scheme {scheme!r}; use a path, file:///path "
                         "or s3://bucket/prefix")
    else:
        root = Path(raw).expanduser()
    root = root if root.is_absolute() else Path.cwd() / root
    if not root.is_dir():
        raise StoreError(f"store dir {root} does not exist; create it (mkdir -p {root}) or fix `store:` "
                         f"in models.yaml / {ENV_STORE} (is the shared filesystem mounted?)")
    why = refusal(root, "store", None)
    if why:
        raise StoreError(f"store dir {root} {why}")
    from .dir import DirStore

    return DirStore(root, raw if scheme else str(root))


def configured_store(project_store: str | None, work_dir: Path) -> Store | None:
    """The store to use: BUILDLIB_STORE if set (empty or `none` turns the store off), else models.yaml `store:`."""
    url = os.environ.get(ENV_STORE)
    if url is None:
        url = project_store
    if url is None or url.strip().lower() in ("", "none", "off"):
        return None
    return open_store(url, work_dir)


def project_store(project: Project) -> GuardedStore | None:
    """The store a project's run uses (buildlib.store.settings: models.yaml `store:`, the environment over it), with
    its read-only flag, signer and trust policy (buildlib.store.guarded); None without one."""
    settings = store_settings(project)
    if settings is None:
        return None
    return GuardedStore(open_store(settings.url, project.work_dir), settings)


def guarded(url: str, project: Project) -> GuardedStore:
    """The store at `url` read with the project's policy (`doit verify --store URL`, `doit gc --store URL`)."""
    settings = store_settings(project)
    push, sign, trust = (settings.push, settings.sign, settings.trust) if settings is not None else (True, (), ())
    return GuardedStore(open_store(url, project.work_dir), StoreSettings(url, push, sign, trust))
