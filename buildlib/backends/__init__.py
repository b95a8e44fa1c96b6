"""Backend registry: models.yaml `backend:` name -> Backend instance."""

from __future__ import annotations

from functools import cache

from .base import Backend


@cache
def get_backend(name: str) -> Backend:
    from .aoti import AotiBackend
    from .trtllm import TrtllmBackend

    backends: dict[str, type[Backend]] = {b.name: b for b in (TrtllmBackend, AotiBackend)}
    if name not in backends:
        raise KeyError(f"unknown backend {name!r}; choose one of {', '.join(sorted(backends))}")
    return backends[name]()
