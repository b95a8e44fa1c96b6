"""A Triton model repository for a trtllm engine: tensorrtllm_backend's `inflight_batcher_llm` layout, filled.

The templates are the user's own copy of the release that matches TensorRT-LLM 1.2.x (`triton_templates:` in
models.yaml: `triton_backend/all_models/inflight_batcher_llm` of the TensorRT-LLM repository): the five models
`tensorrt_llm`, `preprocessing`, `postprocessing`, `ensemble`, `tensorrt_llm_bls`, each a config.pbtxt with
`${name}` placeholders (what the release's tools/fill_template.py substitutes) plus their Python model code,
copied as is. Every placeholder is filled here, from the engine's own config.json and models.yaml (a model's
`triton:` mapping overrides or adds values):

  engine_dir, tokenizer_dir     the engine dir and the checkpoint it was built from (not overridable)
  triton_max_batch_size         the engine's max_batch_size (a larger value contradicts the engine: refused)
  max_beam_width                the engine's (larger: refused)
  gpu_device_ids                0..tp*pp-1, one GPU per rank (another count: refused)
  logits_datatype, *_data_type  from the engine's logits dtype and dtype
  the rest                      the release's documented defaults (decoupled_mode false, one instance each...)

A `parameters { ... "${x}" }` block nobody gave a value for is dropped (the backend's own default), never left
as `${x}`; a placeholder left anywhere else fails the task, naming the file and the placeholder. The output is
published atomically with `triton.json` (its key: the engine's manifest key, the templates' digest and the
values), so the repository goes stale with its engine, its templates or its values.
"""

from __future__ import annotations

import difflib
import json
import re
import shutil
from pathlib import Path
from typing import Any

from ..core.engine import Engine
from ..core.errors import BuildFailed
from ..core.hashing import tree_digest
from ..core.key import key_of
from ..core.layout import checkpoint_dir, repository_dir
from ..core.manifest import write_json_durably
from ..core.model import TRITON_MODELS as MODELS
from ..host.confine import claim
from ..host.publish import clean_leftovers, locked, publish, temp_dir_for
from ..plan.planner import Planner
from ..plan.state import FRESH

PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
STAMP = "triton.json"
RECIPE = 1  # bump when the values filled for the same inputs change
# Values buildlib owns: they come from the engine itself, never from models.yaml.
OWNED = ("engine_dir", "tokenizer_dir")
TYPES = {"float16": "TYPE_FP16", "bfloat16": "TYPE_BF16", "float32": "TYPE_FP32"}
DEFAULTS: dict[str, str] = {  # the release's documented settings for a plain inflight-batching deployment
    "triton_backend": "tensorrtllm", "decoupled_mode": "false", "batching_strategy": "inflight_fused_batching",
    "max_queue_delay_microseconds": "0", "max_queue_size": "0", "preprocessing_instance_count": "1",
    "postprocessing_instance_count": "1", "bls_instance_count": "1", "accumulate_tokens": "false",
    "tensorrt_llm_model_name": "tensorrt_llm", "tensorrt_llm_draft_model_name": "", "multimodal_encoders_name": "",
    "add_special_tokens": "true", "skip_special_tokens": "true",
}


def _scalar(v: str | int | float | bool) -> str:
    return ("true" if v else "false") if isinstance(v, bool) else str(v)


def values(engine: Engine, engine_dir: Path, tokenizer_dir: Path, config: dict[str, Any],
           overrides: dict[str, str | int | float | bool]) -> dict[str, str]:
    """Every placeholder's value for this engine; raises BuildFailed where models.yaml contradicts the engine."""
    build, pre = config.get("build_config", {}), config.get("pretrained_config", {})
    mapping = pre.get("mapping", {})
    world = int(mapping.get("world_size", engine.tp * engine.pp))
    dtype = TYPES.get(str(pre.get("dtype")), "TYPE_FP16")
    out = {**DEFAULTS, "triton_max_batch_size": str(build.get("max_batch_size", 1)),
           "max_beam_width": str(build.get("max_beam_width", 1)), "gpu_device_ids": ",".join(map(str, range(world))),
           "logits_datatype": TYPES.get(str(pre.get("logits_dtype", "float32")), "TYPE_FP32"),
           "encoder_input_features_data_type": dtype, "prompt_embedding_table_data_type": dtype,
           "engine_dir": str(engine_dir), "tokenizer_dir": str(tokenizer_dir)}
    where = f"triton:{engine.id}"
    for k, v in overrides.items():
        if k in OWNED:
            raise BuildFailed(f"{where}: {k} is the engine's own ({out[k]}); remove it from `triton:` in models.yaml")
        out[k] = _scalar(v)
    for k, cap in (("triton_max_batch_size", "max_batch_size"), ("max_beam_width", "max_beam_width")):
        if not out[k].isdigit() or not 1 <= int(out[k]) <= int(build.get(cap, 1)):
            raise BuildFailed(f"{where}: {k} {out[k]} contradicts the engine (built with {cap} "
                              f"{build.get(cap, 1)}, {engine_dir / 'config.json'}): give at most that, or rebuild")
    ids = [i for i in out["gpu_device_ids"].split(",") if i.strip()]
    if len(ids) != world or not all(i.strip().isdigit() for i in ids):
        raise BuildFailed(f"{where}: gpu_device_ids {out['gpu_device_ids']!r} must list {world} GPU indices, one "
                          f"per rank of this tp{engine.tp}-pp{engine.pp} engine")
    return out


def _drop_unfilled_parameters(text: str) -> str:
    """Remove each `parameters[:] { key: ... value: { string_value: "${x}" } }` block still unfilled."""
    out, i = [], 0
    for m in re.finditer(r"^parameters\s*:?\s*\{", text, flags=re.M):
        if m.start() < i:
            continue
        depth, j = 0, m.end() - 1
        while j < len(text):
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            j += 1
            if depth == 0:
                break
        if PLACEHOLDER.search(text[m.start():j]):
            out.append(text[i:m.start()])
            i = j + (1 if text[j:j + 1] == "\n" else 0)
    out.append(text[i:])
    return "".join(out)


def placeholders(templates: Path) -> set[str]:
    return {n for m in MODELS for n in PLACEHOLDER.findall((templates / m / "config.pbtxt").read_text())}


def fill(templates: Path, out: Path, vals: dict[str, str], what: str) -> None:
    """Copy the template tree into out and fill every config.pbtxt; fail on a placeholder left."""
    shutil.copytree(templates, out, symlinks=False, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for model in MODELS:
        cfg = out / model / "config.pbtxt"
        text = _drop_unfilled_parameters(PLACEHOLDER.sub(lambda m: vals.get(m.group(1), m.group(0)), cfg.read_text()))
        code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
        left = sorted(set(PLACEHOLDER.findall(code)))
        if left:
            raise BuildFailed(f"{what}: {model}/config.pbtxt still has {', '.join('${' + n + '}' for n in left)} "
                              f"(no value for it): give it under `triton:` for this model in models.yaml")
        cfg.write_text(text)


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
            fill(project.triton_templates, tmp, vals, what)
            write_json_durably(tmp / STAMP, {"key": want, "engine": engine.id, "engine_key": engine_key,
                                             "values": vals})
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
