"""Engines proven fast (#28) through the stand-ins: validation times ModelRunner.generate at the envelope on every
rank, the speed flows to plan --json, status and the CI report, and a rebuild slower than the engine it replaces is
caught by `perf_gate` (plan shows it regressed, --check fails, the report fails it, release leaves it out)."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

from tests.conftest import doit, plan, write_hf_checkpoint, write_project

MODELS = """\
defaults: {backend: trtllm, archs: [sm90], perf_gate: 0.9, build: {max_batch_size: 4, max_input_len: 512}}
models:
  - name: llama
    checkpoint: ckpt/llama
    parallel: [{tp: 1, pp: 1}, {tp: 1, pp: 2}]
"""
ENGINE, PIPE = "llama/sm90/tp1-pp1", "llama/sm90/tp1-pp2"


def clone(root: Path) -> Path:
    return write_project(root, MODELS, {"llama": {"shards": 1, "seed": 1}})


def test_speed_flows_and_a_slower_rebuild_is_caught(tmp_path: Path, standins):
    root = clone(tmp_path / "repo")
    env = {**standins(), "BUILDLIB_STORE": str(tmp_path / "store")}
    (tmp_path / "store").mkdir()
    r = doit(root, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    first = plan(root, env)
    for e in (ENGINE, PIPE):
        perf = first[e]["perf"]
        assert first[e]["state"] == "fresh" and perf["device"]["name"] == "NVIDIA H100 80GB HBM3"
        assert perf["prefill"]["shape"] == [4, 512] and perf["decode"]["shape"] == [4, 16]
        assert perf["prefill"]["engine"]["runs"] == 10  # a fixed count: every rank makes the same calls
        assert perf["tokens_per_s"] == perf["prefill"]["engine"]["tokens_per_s"] > 0
    # the stand-in's simulated cost: 4 x 512 prefill tokens and 4 x 1 generated at 1e6 tokens/s (x10 for generated)
    assert 0.5e6 < first[ENGINE]["perf"]["tokens_per_s"] < 1.05e6

    # New weights, the same speed: rebuilt, measured again, within the gate.
    write_hf_checkpoint(root / "ckpt/llama", shards=1, seed=2)
    assert doit(root, env=env).returncode == 0
    same = plan(root, env)
    assert same[ENGINE]["state"] == "fresh" and same[ENGINE]["key"] != first[ENGINE]["key"]
    v = json.loads((root / "engines" / ENGINE / "validation.json").read_text())
    assert v["perf_gate"]["regressed"] is False and 0.9 < v["perf_gate"]["ratio"] < 1.1, v["perf_gate"]

    # New weights, and the first validation process of each rank runs at half speed (a GPU measured while busy or
    # not at its clocks): the gate trips, a second validation in a fresh process clears it, the better one counts.
    write_hf_checkpoint(root / "ckpt/llama", shards=1, seed=4)
    (tmp_path / "marks").mkdir()
    r = doit(root, env={**env, "STANDIN_TRTLLM_SLOW_ONCE": str(tmp_path / "marks")})
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"{ENGINE}: tokens/s " in r.stdout and "measuring again in a fresh process to confirm" in r.stdout
    assert "regressed" not in doit(root, "plan", env=env).stdout
    v = json.loads((root / "engines" / ENGINE / "validation.json").read_text())
    slow, fast = v["perf_gate"]["measured"]
    assert v["perf_gate"]["regressed"] is False and slow < 0.8 * fast and v["perf"]["tokens_per_s"] == fast, v

    # New weights again, and a toolchain that makes the engine 30% slower: the gate catches it, twice measured.
    write_hf_checkpoint(root / "ckpt/llama", shards=1, seed=3)
    r = doit(root, env={**env, "STANDIN_TRTLLM_SPEED": "0.7"})
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"{ENGINE}: regressed: tokens/s " in r.stdout and "to confirm" in r.stdout
    v = json.loads((root / "engines" / ENGINE / "validation.json").read_text())
    assert all(m < 0.8 * fast for m in v["perf_gate"]["measured"]), v["perf_gate"]
    text = doit(root, "plan", env=env).stdout
    line = next(ln for ln in text.splitlines() if ENGINE + " " in ln)
    assert line.startswith(f"regressed {ENGINE}  (tokens/s ") and "gate 0.9" in line, text
    pct = int(re.search(r", (-\d+)% \(gate", line).group(1))
    assert -35 <= pct <= -20, line  # 0.7 of the speed, less the fixed overhead of each call
    assert doit(root, "plan", "--check", env=env).returncode == 1
    r = doit(root, "report", "--junit", str(tmp_path / "r.xml"), "--markdown", str(tmp_path / "r.md"), env=env)
    cases = {c.get("name"): c for c in ET.parse(tmp_path / "r.xml").iter("testcase")}
    case = cases[f"validate:{ENGINE}"]
    assert case.find("failure") is not None and "regressed" in case.find("failure").get("message")
    props = {p.get("name"): p.get("value") for p in case.iter("property")}
    assert props["perf_gate.regressed"] == "true" and float(props["prefill.tokens_per_s"]) > 0
    md = (tmp_path / "r.md").read_text()
    assert "### Speed (measured at validation)" in md and f"| `{ENGINE}` | NVIDIA H100 80GB HBM3 |" in md
    rel = doit(root, "release", "prod", env=env)  # both engines of the model got slower: nothing is released
    assert rel.returncode == 2 and "nothing to release to prod" in rel.stderr, rel.stdout + rel.stderr
    for e in (ENGINE, PIPE):
        assert f"left out  {e}: regressed: tokens/s " in rel.stdout, rel.stdout
    rel = doit(root, "release", "prod", "--regressed", env=env)
    assert rel.returncode == 0 and f"released  prod llama: {ENGINE}, {PIPE}" in rel.stdout, rel.stdout


def test_perf_gate_is_checked_in_models_yaml(tmp_path: Path, standins):
    root = clone(tmp_path / "repo")
    (root / "models.yaml").write_text(MODELS.replace("perf_gate: 0.9", "perf_gate: 1.5"))
    r = doit(root, "plan", env=standins())
    assert r.returncode == 2 and "models.yaml:1" in r.stderr and "perf_gate" in r.stderr, r.stderr
