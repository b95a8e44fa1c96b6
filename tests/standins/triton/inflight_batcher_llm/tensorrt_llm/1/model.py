"""Stand-in for tensorrt_llm/1/model.py of the release (its Python model, copied as is)."""
