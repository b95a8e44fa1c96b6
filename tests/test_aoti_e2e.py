"""The embedded default end to end on CPU: real doit, real AOTInductor compile, real validation."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from buildlib.host.isa import host_isa
from tests.conftest import REPO, doit, plan

ISA = host_isa()
ENGINE = f"tiny-llama/{ISA}/tp1-pp1"


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, str]:
    """The shipped models.yaml and dodo.py, built once for this module (a real compile)."""
    root = tmp_path_factory.mktemp("repo")
    shutil.copy(REPO / "models.yaml", root)
    shutil.copy(REPO / "dodo.py", root)
    _tmpdir(root).mkdir()
    first = doit(root, env={**_env(), "TMPDIR": str(_tmpdir(root))})
    assert first.returncode == 0, first.stdout + first.stderr
    return root, first.stdout


def _tmpdir(root: Path) -> Path:
    """The first build's TMPDIR: where Inductor keeps what it does not put under TORCHINDUCTOR_CACHE_DIR."""
    return root.with_name(root.name + "-tmp")


def _env() -> dict[str, str]:
    import os

    env = dict(os.environ)
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if "standins" not in p)
    return env


def test_first_run_builds_and_validates_a_real_engine(built):
    root, out = built
    assert f"built {ENGINE}" in out
    assert f"validated {ENGINE}" in out
    # off a terminal: the worker's phases as plain lines while it runs, and the tally at the end (dodo.py too)
    assert f"build:{ENGINE}: compile (after " in out and "\x1b[" not in out
    assert out.splitlines()[-1] == "1 built, 1 validated, 1 not for this host", out
    edir = root / "engines" / ENGINE
    assert (edir / "model.pt2").stat().st_size > 100_000
    v = json.loads((edir / "validation.json").read_text())
    m = json.loads((edir / "manifest.json").read_text())
    assert v["ok"] is True and v["key"] == m["key"]
    assert v["max_rel_err"] < 1e-4  # float32: compiled engine matches eager PyTorch
    assert v["tokens"]["compiled"] == v["tokens"]["eager"]
    assert m["fields"]["toolchain"]["torch"].startswith("2.")
    assert m["fields"]["target"]["arch"] == ISA
    states = plan(root, _env())
    assert states[ENGINE]["state"] == "fresh"
    assert states["tiny-llama/sm90/tp1-pp1"]["state"] == "blocked"
    # the speed at the envelope, compiled against eager in the same process (#28)
    perf = v["perf"]
    assert perf["prefill"]["shape"] == [4, 64] and perf["decode"]["shape"] == [4, 1]  # models.yaml's envelope
    for shape in ("prefill", "decode"):
        rec = perf[shape]
        assert rec["engine"]["runs"] >= 10 and rec["eager"]["runs"] >= 10
        assert 0 < rec["engine"]["p10_s"] <= rec["engine"]["median_s"] <= rec["engine"]["p90_s"]
        assert rec["speedup"] == pytest.approx(rec["eager"]["median_s"] / rec["engine"]["median_s"])
    assert perf["tokens_per_s"] == pytest.approx(4 * 64 / perf["prefill"]["engine"]["median_s"])
    assert perf["device"]["kind"] == "cpu" and perf["device"]["isa"] == ISA
    assert states[ENGINE]["perf"] == perf
    status = doit(root, "status", "--html", str(root / "status.html"), env=_env()).stdout
    line = next(ln for ln in status.splitlines() if ln.startswith(ENGINE + " "))
    assert f"{perf['tokens_per_s']:,.0f}" in line and f"{perf['prefill']['speedup']:.2f}" in line, status
    page = (root / "status.html").read_text()  # build time against speed: one point for the one measured engine
    assert page.count('<circle class="point"') == 1 and f"{perf['tokens_per_s']:,.0f} tokens/s" in page


def test_the_compile_writes_only_into_its_own_dirs(built):
    """Inductor's precompiled headers (~280 MB) land in the project's build cache, not in $TMPDIR/torchinductor_*;
    the model's own compiled .so (its weights) is not left in the cache."""
    root, _ = built
    assert not [f for f in _tmpdir(root).rglob("*") if not f.is_dir()]  # torch makes the empty dir on import
    cache = root / ".buildlib/inductor-cache"
    assert list(cache.glob("*/precompiled_headers/*.gch"))
    assert not list(cache.rglob("*.wrapper.so")) and not list(cache.rglob("*.wrapper.cpp"))
    assert not list((root / "engines" / ENGINE).glob(".*"))  # the compile's scratch dir went with it


def test_second_run_does_nothing(built):
    root, _ = built
    r = doit(root, env=_env())
    assert r.returncode == 0
    assert f"building {ENGINE}" not in r.stdout and f"validated {ENGINE}" not in r.stdout
    assert f"-- build:{ENGINE}" in r.stdout
    assert r.stdout.splitlines()[-1] == "nothing to do: 1 up to date, 1 not for this host", r.stdout
    r = doit(root, "cpu", env=_env())  # this host's CPU engine, whatever its ISA is named
    assert r.returncode == 0 and r.stdout.splitlines()[-1] == "nothing to do: 1 up to date", r.stdout


def test_changed_max_seq_len_makes_it_stale(built):
    root, _ = built
    text = (root / "models.yaml").read_text()
    (root / "models.yaml").write_text(text.replace("max_seq_len: 128", "max_seq_len: 96"))
    try:
        assert plan(root, _env())[ENGINE]["reasons"] == ["build.max_seq_len 128 -> 96"]
    finally:
        (root / "models.yaml").write_text(text)
    assert plan(root, _env())[ENGINE]["state"] == "fresh"


def test_changed_weight_tensor_rebuilds(built):
    """Change one tensor of the generated checkpoint: the engine is rebuilt and revalidated."""
    import torch
    from safetensors.torch import load_file, save_file

    root, _ = built
    ckpt = next((root / ".buildlib/generated").iterdir()) / "model.safetensors"
    tensors = load_file(ckpt)
    name = sorted(tensors)[0]
    tensors[name] = tensors[name] + torch.ones_like(tensors[name]) * 0.01
    save_file(tensors, ckpt, metadata={"format": "pt"})
    state = plan(root, _env())[ENGINE]
    assert state["state"] == "stale" and state["reasons"] == ["checkpoint model.safetensors changed (weights only)"]
    r = doit(root, env=_env())
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"built {ENGINE}" in r.stdout and f"validated {ENGINE}" in r.stdout
    assert plan(root, _env())[ENGINE]["state"] == "fresh"
