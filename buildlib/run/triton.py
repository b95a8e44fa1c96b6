"""A Triton model repository for a trtllm engine: tensorrtllm_backend's `inflight_batcher_llm` layout, filled.

The templates are the user's own copy of the release that matches TensorRT-LLM 1.2.x (`triton_templates:` in
models.yaml: `triton_backend/all_models/inflight_batcher_llm` of the TensorRT-LLM repository): the five models
`tensorrt_llm`, `preprocessing`, `postprocessing`, `ensemble`, `tensorrt_llm_bls`, each a config.pbtxt with
`${name}` placeholders plus their Python model code, copied as is, and filled as the release's own
tools/fill_template.py fills them (buildlib.run.triton_fill: what is known is filled, an optional string parameter
nobody set stays `${name}` as the tool leaves it, anything else left or contradicting the engine is refused, and
the result must parse as Triton's ModelConfig where tritonclient is installed). The output is published
atomically with `triton.json` (its key: the engine's manifest key, the templates' digest and the values; the
parameters left unset), so the repository goes stale with its engine, its templates or its values.
"""

from __future__ import annotations

import difflib
import json
import shutil
from pathlib import Path
from typing import Any

from ..core.engine import Engine
from ..core.errors import BuildFailed
from ..core.hashing import tree_digest
from ..core.key import key_of
from ..core.layout import checkpoint_dir, repository_dir
from ..core.manifest import write_json_durably
from ..host.confine import claim
from ..host.publish import clean_leftovers, locked, publish, temp_dir_for
from ..plan.planner import Planner
from ..plan.state import FRESH
from .triton_fill import fill, placeholders, schema_checker, values

STAMP = "triton.json"
RECIPE = 2  # bump when the values filled for the same inputs change (2: unset parameters left as fill_template does)


def check_overrides(templates: Path, overrides: dict[str, Any], what: str) -> None:
    """A `triton:` value no template has is a typo: say so, with the closest placeholder."""
    known = placeholders(templates)
    unknown = sorted(set(overrides) - known)
    if unknown:
        hints = [f"{u} (did you mean {c[0]}?)" if (c := difflib.get_close_matches(u, known, n=1)) else u
                 for u in unknown]
        raise BuildFailed(f"{what}: `triton:` sets {', '.join(hints)}, which no config.pbtxt of {templates} has")


def _wanted(planner: Planner, engine: Engine) -> tuple[str, dict[str, str], str]:
    """The engine's key, the values and the repository key that this engine, the templates and models.yaml call
    for; BuildFailed (or OSError/ValueError for an unreadable config.json) where they cannot be had."""
    project = planner.spec.project
    assert project.triton_templates is not None
    st = planner.state(engine)
    if st.state != FRESH or st.key is None:
        raise BuildFailed(f"triton:{engine.id}: engine is {st.state} ({'; '.join(st.reasons)}); build it first")
    engine_dir = engine.dir(project)
    config = json.loads((engine_dir / "config.json").read_text())
    vals = values(engine, engine_dir, checkpoint_dir(planner.spec, engine.model), config, dict(engine.model.triton))
    # the templates' digest through the stat cache: a fleet's checks re-read none of them
    digest = tree_digest(project.triton_templates, planner.cache).digest
    return st.key, vals, key_of({"engine": st.key, "templates": digest, "values": vals, "recipe": RECIPE})


def make_repository(planner: Planner, engine: Engine) -> Path:
    """Write the model repository of a fresh engine into <triton_dir>/<model>/<arch>/tp<N>-pp<M>, atomically."""
    project, what = planner.spec.project, f"triton:{engine.id}"
    assert project.triton_templates is not None and project.triton_dir is not None
    check_overrides(project.triton_templates, dict(engine.model.triton), what)
    engine_key, vals, want = _wanted(planner, engine)
    dest = repository_dir(project, engine)
    claim(project.triton_dir)
    with locked(dest):
        if stamped_key(dest) == want:
            return dest
        clean_leftovers(dest)
        tmp = temp_dir_for(dest)
        try:
            shutil.copytree(project.triton_templates, tmp, symlinks=False, dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            left = fill(tmp, vals, what)
            write_json_durably(tmp / STAMP, {"key": want, "engine": engine.id, "engine_key": engine_key,
                                             "values": vals, "left_unset": left,
                                             "schema_checked": schema_checker() is not None})
            publish(tmp, dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return dest


def fresh(planner: Planner, engine: Engine) -> bool:
    """The repository exists and was filled from this engine, these templates and these values."""
    project = planner.spec.project
    stamp = stamped_key(repository_dir(project, engine))
    if stamp is None or project.triton_templates is None:
        return False
    try:
        return stamp == _wanted(planner, engine)[2]
    except (OSError, ValueError, BuildFailed):
        return False  # the task says why


def stamped_key(repo: Path) -> str | None:
    try:
        return json.loads((repo / STAMP).read_text()).get("key")
    except (OSError, ValueError, AttributeError):
        return None
