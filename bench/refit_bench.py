"""Refit benchmark (#14): a weights-only update against a full build of the same engine, in the same run.

aoti, for real (`--arch cpu` here, `--arch sm90` on a GPU host): the shipped tiny Llama with `refit: true`.
  A. seed 0, built by `doit`; then seed 1 (new weights, same structure): `doit` refits it.
  B. the baseline, in the same run: seed 1 built from nothing by `doit` (the same engine, a full build).
  Reported: the update step (manifest `built.seconds`: refit vs build) and the whole `doit` run (both include
  generating the seed-1 checkpoint and validating against eager PyTorch), and the validation of the refitted
  package on the new weights (max_rel_err, greedy tokens vs eager, and vs B's build).
trtllm, through the stand-ins (`--trtllm`): a 1-model x 2-config refit fleet built, then new weights: the
  stand-in logs count trtllm-build and trtllm-refit invocations of the update run.

Usage: .venv/bin/python bench/refit_bench.py --arch cpu [--trtllm] [--out bench/results/refit-cpu.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

PYPROJECT = '[tool.doit]\nloader = "buildlib"\n'


def doit(root: Path, *args: str, env: dict[str, str] | None = None) -> tuple[float, str]:
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "doit", *args], cwd=root, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"doit {' '.join(args)} in {root} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return wall, r.stdout


def tiny(root: Path, seed: int, arch: str) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "pyproject.toml").write_text(PYPROJECT)
    (root / "models.yaml").write_text(
        "defaults:\n  backend: aoti\n  dtype: float32\n"
        "  build: {max_batch_size: 4, max_input_len: 64, max_seq_len: 128}\n"
        f"models:\n  - name: tiny-llama\n    checkpoint: {{generate: tinyllama, seed: {seed}}}\n    archs: [{arch}]\n"
        "    refit: true\n")


def engine_files(root: Path) -> tuple[dict, dict]:
    (edir,) = [p for p in (root / "engines/tiny-llama").glob("*/tp1-pp1")]
    return json.loads((edir / "manifest.json").read_text()), json.loads((edir / "validation.json").read_text())


def aoti(arch: str, work: Path) -> dict:
    a, b = work / "a", work / "b"
    tiny(a, 0, arch)
    first_wall, _ = doit(a)
    first_m, _ = engine_files(a)
    tiny(a, 1, arch)
    update_wall, update_out = doit(a)
    refit_m, refit_v = engine_files(a)
    assert refit_m["built"].get("how") == "refit", update_out
    tiny(b, 1, arch)
    build_wall, _ = doit(b)
    build_m, build_v = engine_files(b)
    assert build_m["built"].get("how") is None
    return {
        "arch": arch, "engine": refit_m["name"],
        "first_build_run_s": round(first_wall, 2),
        "update": {"run_s": round(update_wall, 2), "step_s": refit_m["built"]["seconds"], "how": "refit",
                   "refit_of": refit_m["built"]["refit_of"], "validate_s": refit_v.get("seconds")},
        "baseline_build": {"run_s": round(build_wall, 2), "step_s": build_m["built"]["seconds"],
                           "validate_s": build_v.get("seconds")},
        "ratio_step": round(refit_m["built"]["seconds"] / build_m["built"]["seconds"], 5),
        "ratio_run": round(update_wall / build_wall, 3),
        "same_key_as_build": build_m["key"] == refit_m["key"],
        "refitted_validation": {k: refit_v.get(k) for k in ("ok", "max_rel_err", "max_abs_err", "tolerance",
                                                            "tokens_match", "tokens")},
        "refit_tokens_equal_build_tokens": refit_v["tokens"]["compiled"] == build_v["tokens"]["compiled"],
        "package_reused": refit_m["outputs"]["model.pt2"] == first_m["outputs"]["model.pt2"],
        "weights_changed": refit_m["outputs"]["weights.safetensors"] != first_m["outputs"]["weights.safetensors"],
    }


def trtllm(work: Path) -> dict:
    from tests.conftest import H100, write_hf_checkpoint
    from tests.standins import standin_env
    from tests.test_refit import new_weights

    root = work / "trt"
    root.mkdir()
    write_hf_checkpoint(root / "ckpt/llama", shards=2, seed=1)
    (root / "pyproject.toml").write_text(PYPROJECT)
    (root / "models.yaml").write_text(
        "defaults:\n  backend: trtllm\n  dtype: float16\n  archs: [sm90]\nmodels:\n  - name: llama\n"
        "    checkpoint: ckpt/llama\n    refit: true\n    parallel: [{tp: 1, pp: 1}, {tp: 2, pp: 1}]\n")
    logs = {"build": work / "build.log", "refit": work / "refit.log"}
    env = {**standin_env(work / "standins", gpus=[H100, H100]), "STANDIN_TRTLLM_LOG": str(logs["build"]),
           "STANDIN_TRTLLM_REFIT_LOG": str(logs["refit"])}

    def count() -> dict[str, int]:
        return {k: len(p.read_text().splitlines()) if p.exists() else 0 for k, p in logs.items()}

    doit(root, env=env)
    before = count()
    new_weights(root / "ckpt/llama", seed=5)
    _, plan_out = doit(root, "plan", env=env)
    wall, out = doit(root, env=env)
    after = count()
    return {"engines": 2, "initial": before, "plan": plan_out.splitlines()[:2],
            "update_run": {"trtllm_build": after["build"] - before["build"],
                           "trtllm_refit": after["refit"] - before["refit"], "run_s": round(wall, 2),
                           "tally": out.splitlines()[-1]}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="cpu", help="cpu (this host's ISA) or sm90")
    ap.add_argument("--trtllm", action="store_true", help="also count stand-in trtllm-build/trtllm-refit runs")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="refit-bench-") as d:
        result = {"date": time.strftime("%Y-%m-%d"), "host": os.uname().nodename, "python": sys.version.split()[0],
                  "aoti": aoti(args.arch, Path(d))}
        if args.trtllm:
            result["trtllm_standins"] = trtllm(Path(d))
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
