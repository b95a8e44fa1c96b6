"""Papercuts a new user hit (issue #13, item 6): each as typed at the command line, in a scratch dir."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import LOADER_PYPROJECT, REPO, doit, write_hf_checkpoint

FLEET_CHECKPOINTS = {"llama-3-8b": "LlamaForCausalLM", "llama-3-70b": "LlamaForCausalLM",
                     "mistral-7b": "MistralForCausalLM", "qwen2-7b": "Qwen2ForCausalLM"}


@pytest.fixture
def repo_copy(tmp_path: Path) -> Path:
    """This repo as a user clones it (pyproject.toml, models.yaml, examples/), with the fleet's checkpoints
    where examples/fleet.yaml expects them (../checkpoints/<name> from examples/: checkpoints/ in the clone)."""
    root = tmp_path / "enginebuild"
    root.mkdir()
    for f in ("pyproject.toml", "models.yaml", "dodo.py"):
        shutil.copy(REPO / f, root / f)
    shutil.copytree(REPO / "examples", root / "examples")
    for i, (name, arch) in enumerate(FLEET_CHECKPOINTS.items()):
        write_hf_checkpoint(root / "checkpoints" / name, shards=1, seed=i, arch=arch)
    return root


def test_the_readmes_fleet_example_works_from_the_repo_root(repo_copy, standins):
    env = standins()
    r = doit(repo_copy, "plan", "--models", "examples/fleet.yaml", env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "llama-3-8b/sm90/tp1-pp1" in r.stdout and r.stdout.splitlines()[-1].startswith("11 engines: ")
    # as the issue typed it: the option before the command
    again = doit(repo_copy, "--models", "examples/fleet.yaml", "plan", env=env)
    assert again.returncode == 0 and again.stdout == r.stdout, again.stderr
    r = doit(repo_copy, "plan", env={**env, "BUILDLIB_MODELS": "examples/fleet.yaml"})  # the env var too
    assert r.returncode == 0 and r.stdout == again.stdout


def test_doit_info_says_what_a_task_checks_and_list_has_cpu_but_no_empty_convert(repo_copy, standins):
    env = standins(gpus=[])
    listed = doit(repo_copy, "list", env=env).stdout.split()
    assert "cpu" in listed and "convert" not in listed  # aoti converts nothing; `cpu` is whatever this ISA is
    cpu_engine = next(t for t in listed if t.startswith("build:tiny-llama/") and "/sm90/" not in t)
    r = doit(repo_copy, "info", cpu_engine, env=env)
    assert r.returncode == 1 and " object at 0x" not in r.stdout  # doit info: 1 = not up to date
    assert f"engine {cpu_engine.removeprefix('build:')}: missing (checkpoint not generated yet)" in r.stdout
    r = doit(repo_copy, "info", "validate:tiny-llama/sm90/tp1-pp1", env=env)
    assert "validation of tiny-llama/sm90/tp1-pp1: blocked (needs an sm90 host" in r.stdout, r.stdout
    fleet = doit(repo_copy, "list", "--models", "examples/fleet.yaml", env=env).stdout.split()
    assert "convert" in fleet and "cpu" not in fleet


def test_command_help_and_a_closed_pipe(tmp_path, standins):
    r = doit(REPO, "plan", "--help")
    assert r.returncode == 0 and r.stdout.startswith("PURPOSE") and "--targets" in r.stdout and not r.stderr
    # a plan longer than a pipe's buffer, read one line of: no BrokenPipeError traceback
    write_hf_checkpoint(tmp_path / "ckpt")
    archs = "[sm70, sm75, sm80, sm86, sm89, sm90, sm100, sm120]"
    (tmp_path / "models.yaml").write_text("defaults: {backend: trtllm}\nmodels:\n" + "".join(
        f"  - {{name: model-with-a-long-name-{i:04d}, checkpoint: ckpt, archs: {archs}}}\n" for i in range(125)))
    (tmp_path / "pyproject.toml").write_text(LOADER_PYPROJECT)
    proc = subprocess.Popen([sys.executable, "-m", "doit", "plan"], cwd=tmp_path, env=standins(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline()
    proc.stdout.close()  # as `| head -1` does
    err = proc.stderr.read() if proc.stderr else ""
    assert proc.wait(timeout=120) == 1 and err == "", err


def test_arch_names_follow_one_rule(tmp_path, standins):
    write_hf_checkpoint(tmp_path / "ckpt")
    (tmp_path / "pyproject.toml").write_text(LOADER_PYPROJECT)

    def plan_with(archs: str) -> subprocess.CompletedProcess:
        (tmp_path / "models.yaml").write_text(
            f"defaults: {{backend: trtllm}}\nmodels:\n  - name: llama\n    checkpoint: ckpt\n    archs: {archs}\n")
        return doit(tmp_path, "plan", env=standins())

    r = plan_with("[H100, a100]")  # a GPU name stands for its arch, in the engine's name and its key
    assert r.returncode == 0, r.stderr
    engines = {line.split()[1] for line in r.stdout.splitlines()[:-1] if not line.startswith("forecast")}
    assert engines == {"llama/sm90/tp1-pp1", "llama/sm80/tp1-pp1"}
    assert r.stdout.splitlines()[-1].startswith("2 engines: ")
    r = plan_with("[sm999]")
    assert r.returncode == 2 and "models.yaml:5: models[0].archs[0]: 'sm999' is not an arch: an SM arch" in r.stderr
    r = plan_with("[h100, sm90]")
    assert r.returncode == 2 and "lists sm90 twice (a GPU name stands for its arch" in r.stderr, r.stderr


def test_bad_paths_yaml_and_globs_say_what_is_wrong(tmp_path, standins):
    write_hf_checkpoint(tmp_path / "ckpt")
    (tmp_path / "weights.safetensors").write_bytes(b"")
    (tmp_path / "pyproject.toml").write_text(LOADER_PYPROJECT)
    models = tmp_path / "models.yaml"
    models.write_text("models:\n  - {name: llama, backend: trtllm, checkpoint: weights.safetensors}\n")
    r = doit(tmp_path, "plan", env=standins())
    assert r.returncode == 2 and "checkpoint 'weights.safetensors' is a file, not a checkpoint dir" in r.stderr
    models.write_text("defaults: {backend: trtllm}\nmodels:\n  - name: llama\n    checkpoint: ckpt\n"
                      "    build: {max_batch_size: 8,\n    archs: [sm90]\n  - name: other\n")
    r = doit(tmp_path, "plan", env=standins())
    assert r.returncode == 2 and "began on line 5" in r.stderr, r.stderr
    models.write_text("defaults: {backend: trtllm}\nmodels:\n  - {name: llama, checkpoint: ckpt}\n")
    r = doit(tmp_path, "plan", env=standins())
    assert r.returncode == 0 and r.stdout.splitlines()[-1] == "1 engine: 1 missing", r.stdout
    r = doit(tmp_path, "plan", "lama/*", env=standins())
    assert r.returncode == 2 and r.stderr.startswith("error: no engine matches 'lama/*'"), r.stderr


def test_a_named_cpu_isa_is_in_the_cpu_group_too(tmp_path, standins):
    (tmp_path / "pyproject.toml").write_text(LOADER_PYPROJECT)
    (tmp_path / "models.yaml").write_text("defaults: {backend: aoti, dtype: float32}\nmodels:\n"
                                          "  - {name: tiny, checkpoint: {generate: tinyllama, seed: 0}, "
                                          "archs: [x86_64-avx2]}\n")
    r = doit(tmp_path, "list", env=standins(gpus=[]))
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert {"cpu", "x86_64-avx2", "build:tiny/x86_64-avx2/tp1-pp1"} <= set(r.stdout.split())
