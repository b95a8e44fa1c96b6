"""The shipped examples are valid: examples/fleet.yaml plans through the real doit CLI."""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.conftest import LOADER_PYPROJECT, REPO, plan, write_hf_checkpoint


def test_fleet_example_plans(tmp_path: Path, standins):
    root = tmp_path / "repo"
    (root / "examples").mkdir(parents=True)
    shutil.copy(REPO / "examples/fleet.yaml", root / "examples/models.yaml")
    for name in ("llama-3-8b", "llama-3-70b", "mistral-7b", "qwen2-7b"):
        write_hf_checkpoint(root / "checkpoints" / name)
    (root / "examples/pyproject.toml").write_text(LOADER_PYPROJECT)
    states = plan(root / "examples", standins())
    assert len(states) == 11
    assert states["llama-3-70b/sm90/tp2-pp2"]["gpus"] == 4
    assert states["llama-3-8b/sm80/tp1-pp1"]["state"] == "blocked"
    assert states["qwen2-7b-h200/sm90/tp1-pp1"]["reasons"][0] == "needs an sm90 host with a NVIDIA H200"
    assert states["mistral-7b-int4/sm90/tp1-pp1"]["state"] == "missing"
