"""The store a run uses, and how: models.yaml `store:` (buildlib.core.model.StoreSpec) with the environment's word over
it, so a CI job can turn a checkout's settings into a read-only or a signing run without editing models.yaml.

    BUILDLIB_STORE=URL                 the store (empty, `none` or `off`: no store)
    BUILDLIB_STORE_PUSH=0|1            0: read-only (restore, never write to the store)
    BUILDLIB_STORE_SIGN_KEY=PATH       sign what is pushed with this EC private key (PEM)
    BUILDLIB_STORE_SIGN=sigstore       sign keyless with the CI's ambient OIDC identity (Sigstore)
    BUILDLIB_STORE_TRUST=PATH[:PATH]   the trust policy: restore only entries signed by these public keys (PEM)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..core.model import Project, StoreSpec
from .base import ENV_STORE, StoreError

ENV_PUSH = "BUILDLIB_STORE_PUSH"
ENV_SIGN_KEY = "BUILDLIB_STORE_SIGN_KEY"
ENV_SIGN = "BUILDLIB_STORE_SIGN"
ENV_TRUST = "BUILDLIB_STORE_TRUST"


@dataclass(frozen=True)
class StoreSettings:
    url: str
    push: bool
    sign: tuple[tuple[str, str], ...]
    trust: tuple[tuple[tuple[str, str], ...], ...]


def _flag(name: str, value: str) -> bool:
    v = value.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise StoreError(f"{name}={value!r}: give 0 or 1")


def _file(name: str, value: str) -> str:
    p = Path(value).expanduser().absolute()
    if not p.is_file():
        raise StoreError(f"{name}: {p} is not a file (a PEM key); fix the path")
    return str(p)


def store_settings(project: Project) -> StoreSettings | None:
    """The project's store settings, the environment's over models.yaml's; None when the run has no store. A
    relative URL is relative to models.yaml, like checkpoints (from the environment: to the working dir)."""
    spec = project.store
    env_url = os.environ.get(ENV_STORE)
    url = env_url if env_url is not None else (spec.url if spec is not None else None)
    if url is None or url.strip().lower() in ("", "none", "off"):
        return None
    if env_url is None and "://" not in url and not Path(url).is_absolute():
        url = str(project.root / url)
    spec = spec or StoreSpec(url)
    push = _flag(ENV_PUSH, os.environ[ENV_PUSH]) if ENV_PUSH in os.environ else spec.push
    sign = spec.sign
    if os.environ.get(ENV_SIGN_KEY):
        sign = (("key", _file(ENV_SIGN_KEY, os.environ[ENV_SIGN_KEY])),)
    elif os.environ.get(ENV_SIGN):
        if os.environ[ENV_SIGN].strip().lower() != "sigstore":
            raise StoreError(f"{ENV_SIGN}={os.environ[ENV_SIGN]!r}: the one value is `sigstore` (keyless signing with "
                             f"the CI's OIDC identity); a key goes in {ENV_SIGN_KEY}")
        sign = (("sigstore", "ambient"),)
    trust = spec.trust
    if os.environ.get(ENV_TRUST):
        trust = tuple((("key", _file(ENV_TRUST, p)),) for p in os.environ[ENV_TRUST].split(os.pathsep) if p)
    return StoreSettings(url, push, sign, trust)
