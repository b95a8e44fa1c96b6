"""Refit (#14) on the AOTInductor path for real on this CPU: the shipped tiny Llama with `refit: true` is compiled
with its weights outside the compiled code; new weights (another seed) are refitted, not recompiled, and the
refitted package matches eager PyTorch on the new weights."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from buildlib.isa import host_isa
from tests.conftest import LOADER_PYPROJECT, REPO, doit, plan
from tests.test_aoti_e2e import _env

ENGINE = f"tiny-llama/{host_isa()}/tp1-pp1"


def models(seed: int, extra: str = "") -> str:
    shipped = (REPO / "models.yaml").read_text()
    assert "checkpoint: {generate: tinyllama, seed: 0}" in shipped
    return shipped.replace("checkpoint: {generate: tinyllama, seed: 0}",
                           f"checkpoint: {{generate: tinyllama, seed: {seed}{extra}}}\n    refit: true")


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("repo")
    (root / "models.yaml").write_text(models(0))
    (root / "pyproject.toml").write_text(LOADER_PYPROJECT)
    r = doit(root, env=_env())
    assert r.returncode == 0 and "1 built, 1 validated" in r.stdout, r.stdout + r.stderr
    return root


def test_refit_package_keeps_its_weights_outside_and_validates(built):
    edir = built / "engines" / ENGINE
    m = json.loads((edir / "manifest.json").read_text())
    assert {"model.pt2", "weights.safetensors"} <= set(m["outputs"]) and m["fields"]["refit"] is True
    v = json.loads((edir / "validation.json").read_text())
    assert v["ok"] and v["max_rel_err"] < 1e-4


def test_new_weights_are_refitted_and_match_eager_on_them(built, tmp_path):
    root = tmp_path / "repo"
    shutil.copytree(built, root)
    old = json.loads((root / "engines" / ENGINE / "manifest.json").read_text())
    package = (root / "engines" / ENGINE / "model.pt2").read_bytes()
    (root / "models.yaml").write_text(models(1))
    assert doit(root, "checkpoint:tiny-llama", env=_env()).returncode == 0  # generated: then plan can compare it
    states = plan(root, _env())
    assert states[ENGINE]["reasons"] == ["weights only: refit"]
    r = doit(root, env=_env())
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"refitting {ENGINE} (weights only)" in r.stdout and "compile (after" not in r.stdout
    assert "1 refitted, 1 validated" in r.stdout.splitlines()[-1], r.stdout
    edir = root / "engines" / ENGINE
    m = json.loads((edir / "manifest.json").read_text())
    assert m["built"]["how"] == "refit" and m["built"]["refit_of"] == old["key"]
    assert (edir / "model.pt2").read_bytes() == package  # the compiled code is reused as is
    assert m["outputs"]["weights.safetensors"] != old["outputs"]["weights.safetensors"]
    v = json.loads((edir / "validation.json").read_text())
    assert v["key"] == m["key"] and v["ok"] and v["max_rel_err"] < 1e-4  # against eager on the new weights
    assert v["tokens"]["compiled"] == v["tokens"]["eager"]
    # and the old weights would be wrong now: the refitted engine is not the old one
    old_v = json.loads((built / "engines" / ENGINE / "validation.json").read_text())
    assert old_v["tokens"]["eager"] != v["tokens"]["eager"]


def test_structural_change_is_named_and_not_a_refit(built, tmp_path):
    root = tmp_path / "repo"
    shutil.copytree(built, root)
    (root / "models.yaml").write_text(models(0, ", num_hidden_layers: 3"))
    r = doit(root, "checkpoint:tiny-llama", env=_env())  # the new checkpoint, generated (not built)
    assert r.returncode == 0, r.stdout + r.stderr
    reasons = plan(root, _env())[ENGINE]["reasons"]
    assert "config.json num_hidden_layers 2 -> 3" in reasons and "weights only: refit" not in reasons, reasons
