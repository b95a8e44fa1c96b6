"""Stand-in for tensorrt_llm/version.py: the version this stand-in pretends to be (rewritten by standin_env)."""

__version__ = "1.2.1"
