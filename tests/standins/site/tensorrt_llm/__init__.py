"""Stand-in for the tensorrt_llm package (TensorRT engine workflow of 1.2.x), for tests without a GPU.

Interfaces follow the real ones; the work is fake: checkpoints and engines hold deterministic bytes.
"""

from __future__ import annotations

from .mapping import Mapping
from .version import __version__

print(f"[TensorRT-LLM] TensorRT LLM version: {__version__}", flush=True)

__all__ = ["Mapping", "__version__"]
