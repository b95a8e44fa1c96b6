"""Inputs are not trust (issue #11): what a checkpoint dir may hold, and how `doit` answers it."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from tests.conftest import H100, LOADER_PYPROJECT, doit, plan, write_hf_checkpoint

MODELS = """\
defaults:
  backend: trtllm
  archs: [sm90]
  validate: false  # the inputs are the point here, not running the engine
  build: {max_batch_size: 8, max_seq_len: 512}
models:
  - name: llama
    checkpoint: ckpt/llama
"""


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    write_hf_checkpoint(root / "ckpt/llama", shards=2, seed=5)
    (root / "models.yaml").write_text(MODELS)
    (root / "pyproject.toml").write_text(LOADER_PYPROJECT)
    return root


def _fifo(p: Path) -> None:
    os.mkfifo(p)


def _socket(p: Path) -> None:
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(p))
    s.close()


def _device(p: Path) -> None:
    p.symlink_to("/dev/null")  # a link to a character device (mknod may be denied even to root)


def _dangling(p: Path) -> None:
    p.symlink_to(p.parent / "nowhere.safetensors")


def _loop(p: Path) -> None:
    p.symlink_to(p.parent)  # a directory link back to the checkpoint itself


@pytest.mark.parametrize("make,name,what", [
    (_fifo, "extra.safetensors", "is a FIFO"),
    (_socket, "sock", "is a socket"),
    (_device, "dev", "is a character device"),
    (_dangling, "model-00003-of-00003.safetensors", "is a dangling link"),
    (_loop, "snapshot", "a directory loop"),
])
def test_special_files_in_a_checkpoint_are_one_line_in_bounded_time(repo, standins, make, name, what):
    make(repo / "ckpt/llama" / name)
    env = standins(gpus=[H100])
    for args in (("plan",), ()):
        r = doit(repo, *args, env=env, timeout=60)  # a FIFO opened for reading would block forever
        assert r.returncode == 2, r.stdout + r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
        assert str(repo / "ckpt/llama" / name) in lines[0] and what in lines[0]
    assert not (repo / "engines").exists()


def test_links_to_regular_files_are_followed_like_a_hf_cache_snapshot(repo, standins, tmp_path):
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    snap = repo / "ckpt/llama"
    for f in sorted(snap.iterdir()):
        target = blobs / f.name
        f.rename(target)
        f.symlink_to(target)
    env = standins(gpus=[H100])
    assert plan(repo, env)["llama/sm90/tp1-pp1"]["state"] == "missing"
    r = doit(repo, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert plan(repo, env)["llama/sm90/tp1-pp1"]["state"] == "fresh"


def _truncated(d: Path) -> None:
    shard = d / "model-00002-of-00002.safetensors"
    shard.write_bytes(shard.read_bytes()[:-10])


def _random(d: Path) -> None:
    (d / "model-00002-of-00002.safetensors").write_bytes(os.urandom(4096))


def _bad_json(d: Path) -> None:
    (d / "config.json").write_text('{"architectures": ["LlamaForCausalLM"],')


def _auto_map(d: Path) -> None:
    (d / "config.json").write_text('{"architectures": ["LlamaForCausalLM"], "auto_map": {"AutoModel": "x.Y"}}')


def _pickle(d: Path) -> None:
    (d / "pytorch_model.bin").write_bytes(b"\x80\x04K\x01.")


@pytest.mark.parametrize("make,culprit,what", [
    (_truncated, "model-00002-of-00002.safetensors", "the file has"),
    (_random, "model-00002-of-00002.safetensors", "not a safetensors file"),
    (_bad_json, "config.json", "not valid JSON"),
    (_auto_map, "config.json", "trust_remote_code: true"),
    (_pickle, "pytorch_model.bin", "pickle weights run code"),
])
def test_malformed_or_untrusted_checkpoints_fail_before_any_worker(repo, standins, make, culprit, what):
    make(repo / "ckpt/llama")
    env = standins(gpus=[H100])
    r = doit(repo, env=env)
    assert r.returncode == 1
    out = r.stdout + r.stderr
    assert f"{repo / 'ckpt/llama' / culprit}: " in out and what in out
    assert "Traceback" not in out
    converted = repo / ".buildlib/checkpoints"
    assert not converted.exists() or not [p for p in converted.iterdir() if not p.name.startswith(".")]
    assert not list((repo / ".buildlib").glob("checkpoints/.*.failed.log"))  # no worker ever started


def test_trust_remote_code_lets_a_pickle_checkpoint_through(repo, standins):
    _pickle(repo / "ckpt/llama")
    (repo / "models.yaml").write_text(MODELS + "    trust_remote_code: true\n")
    env = standins(gpus=[H100])
    r = doit(repo, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert plan(repo, env)["llama/sm90/tp1-pp1"]["state"] == "fresh"
