"""Bad models.yaml: one line naming file:line and field, exit status 2, no traceback, nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import LOADER_PYPROJECT, doit, snapshot, write_hf_checkpoint

GOOD = """\
defaults:
  backend: trtllm
  archs: [sm90]
  build: {max_batch_size: 8}
models:
  - name: llama
    checkpoint: ckpt/llama
    parallel: [{tp: 1, pp: 1}]
"""

CASES = [
    # (id, replace-this, with-this, expected line, expected fragment)
    ("unknown-top-key", "defaults:", "defualts:\n  dtype: float16\nx:", 1,
     "defualts: unknown key; did you mean 'defaults'?"),
    ("unknown-model-key", "    parallel:", "    paralel: []\n    parallel:", 8, "models[0].paralel: unknown key"),
    ("unknown-build-option", "max_batch_size: 8}", "max_batch_size: 8, max_output_len: 64}", 4,
     "defaults.build.max_output_len"),
    ("tp-size-in-build", "max_batch_size: 8}", "max_batch_size: 8, tp_size: 2}", 4, "defaults.build.tp_size"),
    ("wrong-type", "max_batch_size: 8}", "max_batch_size: eight}", 4, "defaults.build.max_batch_size"),
    ("bool-for-int", "max_batch_size: 8}", "max_batch_size: true}", 4, "defaults.build.max_batch_size"),
    ("tp-zero", "{tp: 1, pp: 1}", "{tp: 0, pp: 1}", 8, "models[0].parallel[0].tp: must be an integer >= 1"),
    ("pp-negative", "{tp: 1, pp: 1}", "{tp: 1, pp: -2}", 8, "models[0].parallel[0].pp: must be an integer >= 1"),
    ("duplicate-name", "    parallel: [{tp: 1, pp: 1}]\n",
     "    parallel: [{tp: 1, pp: 1}]\n  - name: llama\n    checkpoint: ckpt/llama\n", 9,
     "models[1].name: duplicate model name 'llama'"),
    ("slash-in-name", "name: llama", "name: meta/llama", 6, "models[0].name: 'meta/llama' is not a safe name"),
    ("dotdot-in-name", "name: llama", "name: a..b", 6, "is not a safe name"),
    ("missing-checkpoint", "checkpoint: ckpt/llama", "checkpoint: ckpt/nope", 7,
     "models[0].checkpoint: checkpoint dir 'ckpt/nope' does not exist"),
    ("bad-arch", "archs: [sm90]", "archs: [hopper]", 3, "defaults.archs[0]: 'hopper' is not an arch"),
    ("bad-dtype", "  backend: trtllm", "  backend: trtllm\n  dtype: fp16", 3, "defaults.dtype: must be one of"),
    ("bad-backend", "backend: trtllm", "backend: onnx", 2, "defaults.backend: unknown backend 'onnx'"),
    ("not-yaml", "models:", "models: [", 6, "not valid YAML: did not find expected node content"),
    ("bad-quant", "    parallel:", "    quantization: {algo: fp4}\n    parallel:", 8,
     "models[0].quantization.algo: must be one of"),
    ("aoti-tp2", "backend: trtllm", "backend: aoti", 8, "aoti builds single-device engines only"),
    ("reserved-name", "name: llama", "name: engines", 6, "'engines' is reserved"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("command", [(), ("plan",)], ids=["doit", "doit-plan"])
def test_bad_input(tmp_path: Path, standins, case, command):
    _, old, new, line, fragment = case
    text = GOOD.replace(old, new, 1)
    if case[0] == "aoti-tp2":
        text = text.replace("{tp: 1, pp: 1}", "{tp: 2, pp: 1}").replace("archs: [sm90]", "archs: [cpu]").replace(
            "build: {max_batch_size: 8}", "build: {max_batch_size: 2}")
    assert text != GOOD
    root = tmp_path / "repo"
    write_hf_checkpoint(root / "ckpt/llama")
    (root / "models.yaml").write_text(text)
    (root / "pyproject.toml").write_text(LOADER_PYPROJECT)
    env = standins()
    before = snapshot(tmp_path)
    r = doit(root, *command, env=env)
    assert r.returncode == 2, r.stdout + r.stderr
    err = r.stderr.strip()
    assert "Traceback" not in r.stderr + r.stdout
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"error: {root / 'models.yaml'}:{line}: "), err
    assert fragment in err, err
    assert snapshot(tmp_path) == before  # nothing written, anywhere in the tree


def test_missing_models_yaml(tmp_path: Path, standins):
    root = tmp_path / "repo"
    root.mkdir()
    (root / "pyproject.toml").write_text(LOADER_PYPROJECT)
    r = doit(root, env=standins())
    assert r.returncode == 2
    assert "models.yaml: file not found" in r.stderr
    assert sorted(p.name for p in root.iterdir()) == ["pyproject.toml"]
