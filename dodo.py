"""`doit` with this file (and no `[tool.doit] loader` in pyproject.toml) builds the engines listed in
models.yaml, or in $BUILDLIB_MODELS: the same tasks the buildlib loader gives (see buildlib)."""

import os

from buildlib.cli.plugin import dodo_tasks, doit_config

MODELS = os.environ.get("BUILDLIB_MODELS") or "models.yaml"
DOIT_CONFIG = doit_config(MODELS)


def task_models():
    """Every engine in models.yaml: checkpoint, convert, build and validate tasks, and groups."""
    yield from dodo_tasks(MODELS)
