"""Stand-in for tensorrt_llm.runtime: ModelRunner."""

from .model_runner import ModelRunner

__all__ = ["ModelRunner"]
