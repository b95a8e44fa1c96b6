"""Two doit runs at once on one project: every engine is built exactly once, state stays sound."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

from tests.conftest import LOADER_PYPROJECT, built_engines, plan, write_hf_checkpoint

MODELS = """\
defaults: {backend: trtllm, archs: [sm90], build: {max_batch_size: 8}}
models:
  - {name: a, checkpoint: ckpt/a, parallel: [{tp: 1, pp: 1}, {tp: 2, pp: 1}]}
  - {name: b, checkpoint: ckpt/b}
  - {name: c, checkpoint: ckpt/c}
"""


def test_two_concurrent_runs_build_each_engine_once(tmp_path: Path, standins):
    root = tmp_path / "repo"
    root.mkdir()
    for i, name in enumerate("abc"):
        write_hf_checkpoint(root / "ckpt" / name, seed=i)
    (root / "models.yaml").write_text(MODELS)
    (root / "pyproject.toml").write_text(LOADER_PYPROJECT)
    # Each build takes a moment (simulated work), so the two runs overlap on every engine.
    env = {**standins(), "STANDIN_TRTLLM_SLEEP": "0.3"}
    runs = [subprocess.Popen([sys.executable, "-m", "doit", *args], cwd=root, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True) for args in ((), ("-n", "2", "-P", "process"))]
    outs = [p.communicate(timeout=300)[0] for p in runs]
    assert [p.returncode for p in runs] == [0, 0], outs
    counts = Counter(built_engines(env))
    assert set(counts) == {"a/sm90/tp1-pp1", "a/sm90/tp2-pp1", "b/sm90/tp1-pp1", "c/sm90/tp1-pp1"}
    assert max(counts.values()) == 1, counts
    assert {v["state"] for v in plan(root, env).values()} == {"fresh"}
