"""Stand-in for postprocessing/1/model.py of the release (its Python model, copied as is)."""
