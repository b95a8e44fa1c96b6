"""Backend registry: models.yaml `backend:` name -> Backend instance."""

from __future__ import annotations

from functools import cache

from .base import Backend


@cache
def backend_classes() -> dict[str, type[Backend]]:
    """Every backend, by its models.yaml name."""
    from .aoti import AotiBackend
    from .trtllm import TrtllmBackend

    return {b.name: b for b in (TrtllmBackend, AotiBackend)}


@cache
def get_backend(name: str) -> Backend:
    backends = backend_classes()
    if name not in backends:
        raise KeyError(f"unknown backend {name!r}; choose one of {', '.join(sorted(backends))}")
    return backends[name]()
