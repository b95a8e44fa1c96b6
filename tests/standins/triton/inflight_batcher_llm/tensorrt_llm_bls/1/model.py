"""Stand-in for tensorrt_llm_bls/1/model.py of the release (its Python model, copied as is)."""
