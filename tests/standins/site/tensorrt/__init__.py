"""Stand-in for the `tensorrt` Python package (version only; rewritten by standin_env)."""

__version__ = "10.14.1.48"
