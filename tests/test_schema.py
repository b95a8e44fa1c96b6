"""The models.yaml JSON Schema (issue #13 item 5): generated from the validator's own tables, committed, referenced
by the shipped files, and as strict as a schema can be about what the validator refuses."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from buildlib.spec import schema
from tests.conftest import REPO

SHIPPED = [REPO / "models.yaml", REPO / "examples/fleet.yaml"]


def validator() -> jsonschema.Draft202012Validator:
    s = json.loads((REPO / "docs/models.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(s)
    return jsonschema.Draft202012Validator(s)


def test_the_committed_schema_is_what_the_tables_generate():
    r = subprocess.run([sys.executable, "-m", "buildlib.spec.schema", "--check"], cwd=REPO, capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    assert json.loads(schema.text()) == json.loads((REPO / "docs/models.schema.json").read_text())


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_files_point_editors_at_the_schema_and_pass_it(path: Path):
    first = path.read_text().splitlines()[0]
    m = re.fullmatch(r"# yaml-language-server: \$schema=(\S+)", first)
    assert m and (path.parent / m.group(1)).resolve() == REPO / "docs/models.schema.json", first
    errors = [e.message for e in validator().iter_errors(yaml.safe_load(path.read_text()))]
    assert errors == []


@pytest.mark.parametrize("doc, where", [
    ({"models": [{"name": "m", "checkpoint": "c", "build": {"max_batch_sise": 8}}]}, "max_batch_sise"),
    ({"models": [{"name": "m", "checkpoint": "c", "arch": ["sm90"]}]}, "arch"),
    ({"models": [{"name": "m", "checkpoint": "c", "archs": ["sm999"]}]}, "sm999"),
    ({"models": [{"name": "m", "checkpoint": "c", "dtype": "fp16"}]}, "fp16"),
    ({"models": [{"name": "m", "checkpoint": "c", "build": {"kv_cache_type": "pagd"}}]}, "pagd"),
    ({"models": [{"name": "m", "checkpoint": "c", "parallel": [{"tp": 0}]}]}, "0"),
    ({"defaults": {"backend": "tensorrt"}, "models": [{"name": "m", "checkpoint": "c"}]}, "tensorrt"),
    ({"modles": []}, "modles"),
])
def test_a_typo_is_rejected(doc: dict, where: str):
    errors = list(validator().iter_errors(doc))
    assert errors and any(where in (e.message + json.dumps(e.instance)) for e in errors), [e.message for e in errors]


def test_gpu_names_and_options_the_validator_takes_pass():
    doc = {"models": [{"name": "m", "checkpoint": "c", "archs": ["H100", "a100", "sm90", "cpu"],
                       "build": {"max_batch_size": 8, "use_fp8_context_fmha": True, "max_decoder_seq_len": 512,
                                 "lora_target_modules": ["attn_q"], "gemm_plugin": None}}]}
    assert [e.message for e in validator().iter_errors(doc)] == []
