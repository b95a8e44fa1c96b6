"""Confinement (issue #11): buildlib writes and deletes only inside dirs it may claim as its own."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.conftest import H100, LOADER_PYPROJECT, doit, plan, snapshot, write_hf_checkpoint

MODELS = """\
{top}defaults:
  backend: trtllm
  archs: [sm90]
  build: {{max_batch_size: 8, max_seq_len: 512}}
models:
  - name: llama
    checkpoint: ckpt/llama
    validate: false
"""


def repo(root: Path, top: str = "") -> Path:
    write_hf_checkpoint(root / "ckpt/llama", shards=2, seed=9)
    (root / "models.yaml").write_text(MODELS.format(top=top))
    (root / "pyproject.toml").write_text(LOADER_PYPROJECT)
    return root


def victim(parent: Path) -> Path:
    home = parent / "victim"
    for d in ("home/alice/thesis", "home/alice/photos", "work"):
        (home / d).mkdir(parents=True)
        (home / d / "notes.txt").write_text("mine\n")
    return home


@pytest.mark.parametrize("top,why", [
    ("work_dir: /\n", "is the filesystem root"),
    ("work_dir: /usr/share/enginebuild-test\n", "is a system directory"),
    ("engines_dir: /etc\n", "is a system directory"),
    ("engines_dir: .\n", "is the project root"),
    ("work_dir: ..\n", "is the project root (where models.yaml is) or above it"),
    ("engines_dir: models.yaml\n", "exists and is not a directory"),
    ("engines_dir: ../victim\n", "holds files that are not enginebuild's"),
])
def test_dirs_that_are_not_buildlibs_are_refused_and_nothing_is_written(tmp_path, standins, top, why):
    root = repo(tmp_path / "repo", top)
    victim(tmp_path)
    env = standins(gpus=[H100])
    before = snapshot(tmp_path)
    for args in (("plan",), (), ("gc", "--remove")):
        r = doit(root, *args, env=env)
        assert r.returncode == 2, r.stdout + r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and why in lines[0] and f"{root / 'models.yaml'}:1: " in lines[0], lines
    assert snapshot(tmp_path) == before
    assert not Path("/statcache.sqlite").exists() and not Path("/spec-cache.pickle").exists()
    assert not Path("/usr/share/enginebuild-test").exists()


def test_gc_removes_only_what_buildlib_wrote(tmp_path, standins):
    root = repo(tmp_path / "repo")
    env = standins(gpus=[H100])
    assert doit(root, env=env).returncode == 0
    assert (root / "engines/.enginebuild").is_file() and (root / ".buildlib/.enginebuild").is_file()
    foreign = root / "engines/old-model/sm90/notes"  # a dir buildlib did not write (no manifest)
    foreign.mkdir(parents=True)
    (foreign / "keep.txt").write_text("mine\n")
    shutil.copytree(root / "engines/llama/sm90/tp1-pp1", root / "engines/gone/sm90/tp1-pp1")  # buildlib's
    r = doit(root, "gc", "--remove", env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert not (root / "engines/gone").exists() and (foreign / "keep.txt").read_text() == "mine\n"
    assert plan(root, env)["llama/sm90/tp1-pp1"]["state"] == "fresh"


def test_dirs_from_before_the_marker_are_still_buildlibs(tmp_path, standins):
    root = repo(tmp_path / "repo")
    env = standins(gpus=[H100])
    assert doit(root, env=env).returncode == 0
    for d in ("engines", ".buildlib"):
        (root / d / ".enginebuild").unlink()
    assert plan(root, env)["llama/sm90/tp1-pp1"]["state"] == "fresh"
    assert (root / ".buildlib/.enginebuild").is_file()


@pytest.mark.skipif(os.stat("/dev/shm").st_dev == os.stat("/tmp").st_dev, reason="needs /dev/shm on its own fs")
def test_engines_dir_on_another_filesystem_builds(tmp_path, standins):
    engines = Path("/dev/shm") / f"enginebuild-test-{os.getpid()}-{tmp_path.name}"
    try:
        root = repo(tmp_path / "repo", f"engines_dir: {engines}\n")
        env = standins(gpus=[H100])
        r = doit(root, env=env)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "Traceback" not in r.stdout + r.stderr
        assert (engines / "llama/sm90/tp1-pp1/rank0.engine").is_file()
        assert plan(root, env)["llama/sm90/tp1-pp1"]["state"] == "fresh"
        assert list((root / ".buildlib/timing-cache").glob("*.cache"))  # replaced within the work dir
        assert not list((root / ".buildlib/timing-cache").glob(".*.tmp"))
    finally:
        shutil.rmtree(engines, ignore_errors=True)
