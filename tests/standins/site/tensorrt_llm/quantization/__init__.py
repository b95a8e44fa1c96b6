"""Stand-in for tensorrt_llm.quantization: exports QuantAlgo."""

from .mode import KV_CACHE_QUANT_ALGO_LIST, QUANT_ALGO_LIST, QuantAlgo

__all__ = ["KV_CACHE_QUANT_ALGO_LIST", "QUANT_ALGO_LIST", "QuantAlgo"]
