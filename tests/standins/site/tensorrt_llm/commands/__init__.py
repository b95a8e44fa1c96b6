"""Stand-in for tensorrt_llm.commands (trtllm-build lives in build.py)."""
