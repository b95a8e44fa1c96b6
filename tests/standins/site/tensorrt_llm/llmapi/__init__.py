"""Stand-in for tensorrt_llm.llmapi (only kv_cache_type is provided)."""
