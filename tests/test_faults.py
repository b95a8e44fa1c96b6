"""Faults (issue #11): Ctrl-C, SIGTERM, a full disk, secrets in the environment."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import H100, LOADER_PYPROJECT, doit, plan, trtllm_log, write_hf_checkpoint

MODELS = """\
{top}defaults:
  backend: trtllm
  archs: [sm90]
  validate: {validate}
  build: {{max_batch_size: 8, max_seq_len: 512}}
models:
  - name: done
    checkpoint: ckpt/done
  - name: llama
    checkpoint: ckpt/llama
    parallel: [{{tp: 2, pp: 1}}]
"""


def repo(root: Path, top: str = "", validate: bool = False) -> Path:
    write_hf_checkpoint(root / "ckpt/llama", shards=2, seed=3)
    write_hf_checkpoint(root / "ckpt/done", shards=1, seed=4)
    (root / "models.yaml").write_text(MODELS.format(top=top, validate=str(validate).lower()))
    (root / "pyproject.toml").write_text(LOADER_PYPROJECT)
    return root


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie is dead too (only its exit status is left)
        return f.read().rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.parametrize("sig,code,jobs", [(signal.SIGTERM, 143, ()), (signal.SIGINT, 130, ()),
                                           (signal.SIGTERM, 143, ("-n", "2", "-P", "process"))],
                         ids=["sigterm", "sigint", "sigterm-parallel-workers"])
def test_signal_mid_build_stops_everything_and_the_next_run_finishes(tmp_path, standins, sig, code, jobs):
    root = repo(tmp_path / "repo")
    env = standins(gpus=[H100, H100])
    assert doit(root, "build:done/sm90/tp1-pp1", env=env).returncode == 0  # a finished engine
    fifo = tmp_path / "started"
    os.mkfifo(fifo)
    hooked = {**env, "STANDIN_TRTLLM_STARTED_FIFO": str(fifo)}
    proc = subprocess.Popen([sys.executable, "-m", "doit", *jobs], cwd=root, env=hooked, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    with open(fifo) as f:  # the stand-in trtllm-build has written rank 0 and waits to be killed
        f.read()
    builder = trtllm_log(env)[-1]["pid"]
    assert alive(builder)
    proc.send_signal(sig)  # to doit alone, as `kill <pid>` or a CI cancel does
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == code, out + err
    assert err.strip().splitlines()[-1] == "interrupted" and "Traceback" not in err, err
    assert not alive(builder)  # the builder's whole process group was stopped and waited for
    edir = root / "engines/llama/sm90/tp2-pp1"
    assert not list(edir.parent.glob(".tp2-pp1.tmp-*")) and not (edir / "manifest.json").exists()
    assert not list((root / ".buildlib/timing-cache").glob(".*.tmp"))
    assert plan(root, env)["done/sm90/tp1-pp1"]["state"] == "fresh"  # finished work is kept
    r = doit(root, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert {s["state"] for s in plan(root, env).values()} == {"fresh"}


@pytest.fixture
def small_fs(tmp_path: Path):
    """A 256 KiB tmpfs (needs root and mount rights, as on CI's machine)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_full_disk_is_one_line_and_the_next_run_finishes(tmp_path, standins, small_fs):
    engines = small_fs / "engines"
    root = repo(tmp_path / "repo", f"engines_dir: {engines}\n")
    env = standins(gpus=[H100, H100])
    filler = small_fs / "filler"
    with open(filler, "wb", buffering=0) as f:  # fill the disk to the last block
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError:
            pass
    r = doit(root, env=env)
    assert r.returncode == 1
    out = r.stdout + r.stderr
    assert "no space left on device: " in out and "Traceback" not in out, out
    leftovers = list(engines.rglob(".*.tmp*")) if engines.exists() else []
    assert leftovers == []  # nothing half-written is left behind
    filler.unlink()
    r = doit(root, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert {s["state"] for s in plan(root, env).values()} == {"fresh"}


@pytest.mark.parametrize("free_kib", [8, 16, 24])
def test_a_disk_that_fills_during_a_build_leaves_no_temp_dir(tmp_path, standins, small_fs, free_kib):
    """#26 item 7: the disk fills while the engine is written (a few KiB left: its dirs and part of its files fit),
    so the copy of the failed build's log fails too; the temp dir with the partial engine goes all the same."""
    engines = small_fs / "engines"
    root = repo(tmp_path / "repo", f"engines_dir: {engines}\n")
    env = standins(gpus=[H100, H100])
    filler = small_fs / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError:
            pass
    os.truncate(filler, max(0, filler.stat().st_size - free_kib * 1024))  # room for the start of a build only
    r = doit(root, env=env)
    out = r.stdout + r.stderr
    assert r.returncode == 1 and "no space left on device" in out and "Traceback" not in out, out
    assert list(engines.rglob(".*.tmp*")) == [] and list(engines.rglob("*.engine")) == []
    filler.unlink()
    r = doit(root, env=env)
    assert r.returncode == 0, r.stdout + r.stderr


def test_secrets_in_the_environment_are_written_nowhere(tmp_path, standins):
    secrets = {"HF_TOKEN": "hf_SECRETtoken0123456789", "AWS_SECRET_ACCESS_KEY": "awsSECRETkey0123456789/abc",
               "AWS_SESSION_TOKEN": "awsSESSIONsecret987654321"}
    store = tmp_path / "store"
    store.mkdir()
    root = repo(tmp_path / "repo", f"store: {store}\n", validate=True)
    env = {**standins(gpus=[H100, H100]), **secrets}
    r = doit(root, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Traceback" not in r.stdout + r.stderr
    r = doit(root, "report", "--junit", str(root / "report.xml"), "--markdown", str(root / "report.md"), env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    written = [p for d in (root, store) for p in d.rglob("*") if p.is_file()]
    assert any(p.name == "manifest.json" for p in written) and (root / "report.xml").is_file()
    for p in written:
        data = p.read_bytes()
        for name, value in secrets.items():
            assert value.encode() not in data, f"{name} leaked into {p}"
    for value in secrets.values():
        assert value not in r.stdout + r.stderr
    m = json.loads((root / "engines/done/sm90/tp1-pp1/manifest.json").read_text())
    assert "HF_TOKEN" not in json.dumps(m)
