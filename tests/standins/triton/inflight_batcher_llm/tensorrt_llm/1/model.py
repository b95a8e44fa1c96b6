"""Stand-in for tensorrt_llm/1/model.py of the release: the Python implementation of the tensorrt_llm model, which
Triton loads only with `triton_backend: python`. buildlib fills `triton_backend: tensorrtllm` (the C++ backend,
whose parameter reads tests/standins/triton/server.py mirrors), so this file is copied, never loaded here."""
