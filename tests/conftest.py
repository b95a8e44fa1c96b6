"""Shared fixtures: a project dir with models.yaml, fake HF checkpoints and the stand-in toolchain."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
H100 = {"name": "NVIDIA H100 80GB HBM3", "compute_cap": "9.0", "memory_total_mib": 81559, "memory_used_mib": 0}

LOADER_PYPROJECT = '[tool.doit]\nloader = "buildlib"\n'


def write_hf_checkpoint(d: Path, shards: int = 2, seed: int = 0, arch: str = "LlamaForCausalLM") -> Path:
    """A Hugging Face-layout dir: config.json plus `model-0000i-of-0000n.safetensors` shards."""
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps({"architectures": [arch], "hidden_size": 64, "vocab_size": 256,
                                               "num_hidden_layers": 2, "max_position_embeddings": 4096}))
    for i in range(1, shards + 1):
        (d / f"model-{i:05d}-of-{shards:05d}.safetensors").write_bytes(os.urandom(4096) if seed < 0 else
                                                                      bytes((seed + i + j) % 251 for j in range(4096)))
    return d


def doit(cwd: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """The real doit CLI in a subprocess (as a user types it)."""
    return subprocess.run([sys.executable, "-m", "doit", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def plan(cwd: Path, env: dict[str, str] | None = None) -> dict[str, dict]:
    r = doit(cwd, "plan", "--json", env=env)
    assert r.returncode == 0, r.stderr + r.stdout
    return {e["engine"]: e for e in json.loads(r.stdout)}


def trtllm_log(env: dict[str, str]) -> list[dict]:
    p = Path(env["STANDIN_TRTLLM_LOG"])
    return [json.loads(line) for line in p.read_text().splitlines()] if p.exists() else []


def built_engines(env: dict[str, str]) -> list[str]:
    """Engine dirs that trtllm-build was asked to build, as `<model>/<arch>/tp<N>-pp<M>`."""
    out = []
    for rec in trtllm_log(env):
        argv = rec["argv"]
        tmp = Path(argv[argv.index("--output_dir") + 1])
        name = tmp.name.split(".tmp-")[0].lstrip(".")
        out.append(f"{tmp.parent.parent.name}/{tmp.parent.name}/{name}")
    return out


@pytest.fixture
def standins(tmp_path: Path):
    from tests.standins import standin_env

    def make(**kw) -> dict[str, str]:
        env = standin_env(tmp_path / "standins", gpus=kw.pop("gpus", [H100, H100]), **kw)
        env.setdefault("STANDIN_TRTLLM_LOG", str(tmp_path / "trtllm-build.log"))
        return env

    return make
