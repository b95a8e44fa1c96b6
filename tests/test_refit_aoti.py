"""Refit (#14) on the AOTInductor path for real on this CPU: the shipped tiny Llama with `refit: true` is compiled
with its weights outside the compiled code; new weights (another seed) are refitted, not recompiled, and the
refitted package matches eager PyTorch on the new weights."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from buildlib.host.isa import host_isa
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


def test_fast_refit_copies_bytes_and_says_why_not(tmp_path):
    """The torch-free path: tensor bytes under the engine's names, or the reason it does not apply."""
    from buildlib.backends.aoti_refit import fast_refit
    from tests.conftest import write_safetensors

    old = tmp_path / "old.safetensors"
    write_safetensors(old, {"inner.a": b"\0" * 16, "inner.b": b"\0" * 8})
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    write_safetensors(ckpt / "model-1.safetensors", {"a": bytes(range(16))})
    write_safetensors(ckpt / "model-2.safetensors", {"b": bytes(range(100, 108)), "extra": b"x"})
    out = tmp_path / "new.safetensors"
    assert fast_refit(old, ckpt, out) is None
    from buildlib.core.checkpoint import safetensors_header

    header, start = safetensors_header(out)
    data = out.read_bytes()[start:]
    a, b = header["inner.a"]["data_offsets"], header["inner.b"]["data_offsets"]
    assert data[a[0]:a[1]] == bytes(range(16)) and data[b[0]:b[1]] == bytes(range(100, 108))
    assert set(header) == {"inner.a", "inner.b"}
    write_safetensors(ckpt / "model-1.safetensors", {"a": bytes(range(8))})  # another shape: not this path
    out.unlink()
    assert fast_refit(old, ckpt, out) == "a is U8 [8] in the checkpoint, U8 [16] in the engine" and not out.exists()
    (ckpt / "model-1.safetensors").unlink()
    assert fast_refit(old, ckpt, out) == "the checkpoint has no tensor named a"


def test_torch_refit_worker_casts_where_the_checkpoint_dtype_differs(tmp_path):
    """The fallback: a float16 checkpoint for a float32 engine is loaded (and cast) by transformers."""
    import subprocess
    import sys

    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM

    from buildlib.backends.aoti_refit import fast_refit
    from buildlib.core.tinyllama import write_checkpoint

    ckpt = tmp_path / "ckpt16"
    write_checkpoint(ckpt, seed=3, dtype="float16")
    ref = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32)
    old = tmp_path / "old.safetensors"
    save_file({f"inner.{k}": torch.zeros_like(v) for k, v in ref.state_dict().items()}, str(old))
    assert "F16" in (fast_refit(old, ckpt, tmp_path / "x.safetensors") or "")
    req = {"op": "refit", "checkpoint": str(ckpt), "dtype": "float32", "device": "cpu", "source_weights": str(old),
           "weights": str(tmp_path / "new.safetensors"), "result": str(tmp_path / "result.json")}
    (tmp_path / "req.json").write_text(json.dumps(req))
    r = subprocess.run([sys.executable, "-m", "buildlib.backends.aoti_worker", str(tmp_path / "req.json")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    new = load_file(str(tmp_path / "new.safetensors"))
    assert set(new) == {f"inner.{k}" for k in ref.state_dict()}
    assert all(torch.equal(new[f"inner.{k}"], v) and new[f"inner.{k}"].dtype == torch.float32
               for k, v in ref.state_dict().items())
