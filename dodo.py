"""`doit` in the repo root builds the engines listed in models.yaml (see buildlib)."""

from buildlib.plugin import dodo_tasks, doit_config

MODELS = "models.yaml"
DOIT_CONFIG = doit_config(MODELS)


def task_models():
    """Every engine in models.yaml: checkpoint, convert, build and validate tasks, and groups."""
    yield from dodo_tasks(MODELS)
