"""Engine keys across a change of buildlib's code: a tree built by one checkout must be `fresh` to another.

    python bench/keys_compat.py OLD_PYTHON NEW_PYTHON [OUT_DIR]

Each interpreter is a venv with its own buildlib installed (e.g. a clone of the previous commit with
`pip install -e .[test]`). In OUT_DIR (default bench/out/keys-compat) this writes a fleet that exercises every
kind of key field (trtllm through the stand-ins of tests/standins: default options, options resolved per model
architecture, tp/pp, weight-only quantization, refit, a LoRA input dir; aoti: the tiny Llama on this CPU), builds
it with OLD's `doit`, then asks NEW's `doit plan --json`: every engine must be fresh, and each key the one OLD
wrote. Exit 0 when they all are; the per-engine table goes to stdout and OUT_DIR/result.json.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.conftest import LOADER_PYPROJECT, write_hf_checkpoint  # noqa: E402
from tests.standins import H100, standin_env  # noqa: E402

MODELS = """\
defaults:
  backend: trtllm
  dtype: float16
  archs: [sm90]
  build: {max_batch_size: 8, max_input_len: 64, max_seq_len: 128}
models:
  - name: llama
    checkpoint: ckpt/llama
    parallel: [{tp: 1, pp: 1}, {tp: 2, pp: 1}, {tp: 1, pp: 2}]
  - name: llama-opts
    checkpoint: ckpt/llama
    build: {max_batch_size: 64, gemm_plugin: auto, kv_cache_type: continuous, use_paged_context_fmha: disable}
  - name: llama-int8
    checkpoint: ckpt/llama
    quantization: int8_wo
  - name: llama-refit
    checkpoint: ckpt/llama
    refit: true
  - name: llama-lora
    checkpoint: ckpt/llama
    validate: false
    build: {lora_dir: [lora/a], lora_plugin: auto, lora_target_modules: [attn_q, attn_v]}
  - name: tiny
    backend: aoti
    dtype: float32
    checkpoint: {generate: tinyllama, seed: 0}
    archs: [cpu]
    build: {max_batch_size: 2, max_input_len: 16, max_seq_len: 32}
"""


def run(python: str, root: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([python, "-m", "doit", *args], cwd=root, env=env, capture_output=True, text=True,
                          timeout=1800)


def main() -> None:
    old, new = sys.argv[1], sys.argv[2]
    out = Path(sys.argv[3]) if len(sys.argv) > 3 else REPO / "bench/out/keys-compat"
    if out.exists():
        shutil.rmtree(out)
    root = out / "fleet"
    root.mkdir(parents=True)
    (root / "models.yaml").write_text(MODELS)
    (root / "pyproject.toml").write_text(LOADER_PYPROJECT)
    write_hf_checkpoint(root / "ckpt/llama")
    (root / "lora/a").mkdir(parents=True)
    (root / "lora/a/adapter_config.json").write_text('{"r": 8}')
    env = standin_env(out / "standins", gpus=[H100, H100])
    env["BUILDLIB_PROGRESS"] = "plain"
    built = run(old, root, env=env)
    print(built.stdout[-2000:], built.stderr[-2000:], sep="\n")
    if built.returncode != 0:
        raise SystemExit(f"the old checkout's build failed (exit {built.returncode})")
    recorded = {str(p.parent.relative_to(root / "engines")): json.loads(p.read_text())["key"]
                for p in (root / "engines").glob("*/*/*/manifest.json")}
    planned = run(new, root, "plan", "--json", env=env)
    if planned.returncode != 0:
        raise SystemExit(f"the new checkout's plan failed: {planned.stderr}")
    rows = json.loads(planned.stdout)
    result = [{"engine": r["engine"], "state": r["state"], "key": r["key"], "built_key": recorded.get(r["engine"]),
               "same": r["state"] == "fresh" and r["key"] == recorded.get(r["engine"])} for r in rows]
    for r in result:
        print(f"{'ok  ' if r['same'] else 'FAIL'} {r['state']:<8} {r['engine']:<28} {r['key']}")
    (out / "result.json").write_text(json.dumps({"engines": result, "old": old, "new": new}, indent=1))
    bad = [r for r in result if not r["same"]]
    print(f"{len(result) - len(bad)} of {len(result)} engines fresh with the same key")
    raise SystemExit(1 if bad or not result else 0)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
