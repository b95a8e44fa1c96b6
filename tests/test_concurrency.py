"""Two doit runs at once on one project: they overlap, one waits on the other's lock, every engine and every
conversion is made exactly once, and the state stays sound."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

from tests.conftest import H100, LOADER_PYPROJECT, built_engines, plan, trtllm_log, write_hf_checkpoint

MODELS = """\
defaults: {backend: trtllm, archs: [sm90], build: {max_batch_size: 8}}
models:
  - {name: a, checkpoint: ckpt/a, parallel: [{tp: 1, pp: 1}, {tp: 2, pp: 1}]}
  - {name: b, checkpoint: ckpt/b}
  - {name: c, checkpoint: ckpt/c}
"""
ENGINES = {"a/sm90/tp1-pp1", "a/sm90/tp2-pp1", "b/sm90/tp1-pp1", "c/sm90/tp1-pp1"}
WAIT = "waiting for another run that holds its lock"


def test_two_concurrent_runs_overlap_and_build_each_engine_once(tmp_path: Path, standins):
    root = tmp_path / "repo"
    root.mkdir()
    for i, name in enumerate("abc"):
        write_hf_checkpoint(root / "ckpt" / name, seed=i)
    (root / "models.yaml").write_text(MODELS)
    (root / "pyproject.toml").write_text(LOADER_PYPROJECT)
    env = {**standins(gpus=[H100] * 4), "STANDIN_CONVERT_LOG": str(tmp_path / "convert.log")}
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    first = subprocess.Popen([sys.executable, "-m", "doit"], cwd=root, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True,
                             env={**env, "STANDIN_RUN_TAG": "first", "STANDIN_TRTLLM_GATE": str(gate)})
    with open(gate, "w"):  # returns once the first run's first build holds its lock (and its GPUs) at the gate
        held = built_engines(env)
        assert len(held) == 1 and first.poll() is None
        second = subprocess.Popen([sys.executable, "-m", "doit", "-n", "2", "-P", "process"], cwd=root,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  env={**env, "STANDIN_RUN_TAG": "second"})
        lines = []
        assert second.stdout is not None
        for line in second.stdout:  # the second run does the rest, then waits on the held engine's lock
            lines.append(line)
            if WAIT in line:
                break
        assert any(f"build:{held[0]}: {WAIT}" in x for x in lines), "".join(lines)
        assert first.poll() is None  # the runs overlapped: the first is still inside its build
    out_second = "".join(lines) + second.communicate(timeout=300)[0]
    out_first = first.communicate(timeout=300)[0]
    assert (first.returncode, second.returncode) == (0, 0), out_first + out_second
    counts = Counter(built_engines(env))
    assert set(counts) == ENGINES and max(counts.values()) == 1, counts
    runs = Counter(rec["run"] for rec in trtllm_log(env))
    assert set(runs) == {"first", "second"}, runs  # both did work
    conversions = [json.loads(x) for x in Path(env["STANDIN_CONVERT_LOG"]).read_text().splitlines()]
    per_rank = Counter((c["hf_dir"], c["tp"], c["pp"], c["rank"]) for c in conversions)
    assert len(per_rank) == 5 and max(per_rank.values()) == 1, per_rank  # a: tp1 (1 rank) + tp2 (2), b, c
    assert {v["state"] for v in plan(root, env).values()} == {"fresh"}
