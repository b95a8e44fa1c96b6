"""The JSON Schema of models.yaml, generated from the tables the validator itself checks against (spec's keys,
dtypes, quantization and arch names, each backend's build options), so the two cannot drift apart.

    python -m buildlib.spec.schema             # print it
    python -m buildlib.spec.schema --write     # write docs/models.schema.json (the file editors are pointed at)
    python -m buildlib.spec.schema --check     # exit 1 if docs/models.schema.json is not what this code generates

Editors (VS Code's YAML extension, JetBrains, ...) pick it up from the first line of a models.yaml:
`# yaml-language-server: $schema=docs/models.schema.json`. The schema catches what a schema can (unknown keys,
types, enums, ranges); models.yaml is still checked in full when read (e.g. option combinations, paths).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from ..backends.registry import recipes
from ..core.model import (
    CPU_ARCH_RE,
    DTYPES,
    GENERATED_LIMITS,
    KV_CACHE_QUANT,
    MAX_SIZE,
    MAX_WORLD_SIZE,
    MODEL_KEYS,
    NAME_RE,
    NAMED_KEYS,
    QUANT_ALGOS,
    TOP_KEYS,
)
from ..host.gpu import GPU_ARCHS, PRODUCT_ARCHS

FILE = Path(__file__).resolve().parent.parent.parent / "docs" / "models.schema.json"
NULLABLE_STR = {"type": ["string", "null"]}


def _model_properties() -> dict[str, Any]:
    backends = recipes()
    build: dict[str, Any] = {}
    for name, b in backends.items():
        for opt, sch in b.schema().items():
            build.setdefault(opt, {**sch, "description": ""})["description"] += f"{name}: {sch['description']}. "
    gpu_names = sorted({n for a in (*GPU_ARCHS, *PRODUCT_ARCHS) for n in (a, a.upper())})  # case as users write it
    arch = {"anyOf": [{"enum": gpu_names}, {"type": "string", "pattern": f"^(?:{CPU_ARCH_RE.pattern})$"}],
            "description": "an SM arch, a GPU name that stands for one (h100 = sm90), or cpu (this host's ISA)"}
    world = {"type": "integer", "minimum": 1, "maximum": MAX_WORLD_SIZE}
    props: dict[str, Any] = {
        "backend": {"enum": sorted(backends)},
        "dtype": {"enum": list(DTYPES)},
        "quantization": {"anyOf": [
            {"type": "null"}, {"enum": sorted(QUANT_ALGOS)},
            {"type": "object", "additionalProperties": False,
             "properties": {"algo": {"enum": [*sorted(QUANT_ALGOS), None]},
                            "kv_cache": {"enum": [*sorted(KV_CACHE_QUANT), None]}}}]},
        "archs": {"type": "array", "minItems": 1, "uniqueItems": True, "items": arch},
        "parallel": {"type": "array", "minItems": 1, "items": {
            "type": "object", "additionalProperties": False, "properties": {"tp": world, "pp": world}}},
        "build": {"type": ["object", "null"], "additionalProperties": False, "properties": build},
        "gpu_name": NULLABLE_STR,
        "max_workers": {"type": ["integer", "null"], "minimum": 1, "maximum": MAX_WORLD_SIZE},
        "validate": {"type": "boolean"},
        "perf_gate": {"type": ["number", "null"], "exclusiveMinimum": 0, "maximum": 1,
                      "description": "report a rebuilt engine regressed when its measured tokens/s is below this "
                                     "share of the engine it replaces (same name, same GPU model), e.g. 0.95"},
        "model_class": NULLABLE_STR,
        "trust_remote_code": {"type": "boolean"},
        "refit": {"type": "boolean", "description": "build engines refittable; a weights-only checkpoint change is "
                  "then refitted instead of rebuilt"},
        "triton": {"type": ["object", "null"], "additionalProperties": {"type": ["string", "number", "boolean"]},
                   "description": "values for the Triton config.pbtxt placeholders (buildlib.run.triton)"},
    }
    missing = MODEL_KEYS - set(props)
    assert not missing, f"models.yaml keys without a schema: {missing}"  # a new key needs its schema here
    return props


def schema() -> dict[str, Any]:
    model = _model_properties()
    generated = {"type": "object", "additionalProperties": False, "required": ["generate"], "properties": {
        "generate": {"enum": ["tinyllama"]}, "seed": {"type": "integer", "minimum": 0}, "dtype": {"enum": list(DTYPES)},
        **{k: {"type": "integer", "minimum": 1, "maximum": v} for k, v in GENERATED_LIMITS.items()}}}
    entry = {"type": "object", "additionalProperties": False, "required": sorted(NAMED_KEYS), "properties": {
        "name": {"type": "string", "pattern": f"^{NAME_RE.pattern}$"},
        "checkpoint": {"anyOf": [{"type": "string", "minLength": 1}, generated],
                       "description": "a Hugging Face checkpoint dir (relative to this file), or {generate: ...}"},
        **model}}
    top = {
        "defaults": {"type": ["object", "null"], "additionalProperties": False, "properties": model},
        "models": {"type": "array", "minItems": 1, "items": entry},
        "engines_dir": {"type": "string"}, "work_dir": {"type": "string"},
        "store": {"anyOf": [
            {"type": ["string", "null"], "description": "a dir, file://, or s3://bucket/prefix"},
            {"type": "object", "additionalProperties": False, "required": ["url"], "properties": {
                "url": {"type": "string", "minLength": 1}, "push": {"type": "boolean"},
                "sign": {"anyOf": [
                    {"type": "object", "additionalProperties": False, "required": ["key"], "properties": {
                        "key": {"type": "string"}, "certificate": {"type": "string"},
                        "chain": {"type": "array", "items": {"type": "string"}}}},
                    {"type": "object", "additionalProperties": False, "required": ["sigstore"],
                     "properties": {"sigstore": {"const": True}}}]},
                "trust": {"type": "array", "minItems": 1, "items": {"anyOf": [
                    {"type": "string", "description": "a public key (PEM)"},
                    {"type": "object", "additionalProperties": False, "required": ["certificate_chain"],
                     "properties": {"certificate_chain": {"type": "array", "items": {"type": "string"}}}},
                    {"type": "object", "additionalProperties": False, "required": ["sigstore"], "properties": {
                        "sigstore": {"type": "object", "additionalProperties": False,
                                     "required": ["identity", "issuer"],
                                     "properties": {"identity": {"type": "string"}, "issuer": {"type": "string"}}}}},
                ]}}}},
        ], "description": "the shared engine store: a URL, or {url, push, sign, trust} (signed entries, a trust "
                          "policy; buildlib.store.settings)"},
        "triton_templates": {"type": "string", "description": "tensorrtllm_backend's all_models/inflight_batcher_llm"},
        "triton_dir": {"type": "string", "description": "where Triton model repositories go [triton]"},
    }
    assert set(top) == TOP_KEYS, set(top) ^ TOP_KEYS
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": "enginebuild/models.schema.json",
            "title": "enginebuild models.yaml", "type": "object", "additionalProperties": False,
            "required": ["models"], "properties": top,
            "$comment": f"generated by python -m buildlib.spec.schema; sizes up to {MAX_SIZE}"}


def text() -> str:
    return json.dumps(schema(), indent=1, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args == ["--write"]:
        FILE.write_text(text())
        return 0
    if args == ["--check"]:
        if FILE.is_file() and FILE.read_text() == text():
            return 0
        print(f"{FILE} is not what buildlib generates: run python -m buildlib.spec.schema --write", file=sys.stderr)
        return 1
    if args:
        print("usage: python -m buildlib.spec.schema [--write | --check]", file=sys.stderr)
        return 2
    sys.stdout.write(text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
