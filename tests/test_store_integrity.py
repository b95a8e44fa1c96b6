"""Store integrity and `doit verify` (issue #11): an entry is used only if everything about it checks out."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from tests.conftest import H100, built_engines, doit, plan
from tests.test_store_e2e import ENGINES, MODELS


def _clone(root: Path) -> Path:
    """A fresh checkout, as test_store_e2e's, without validation (restores are what is checked here)."""
    from tests.test_store_e2e import _clone as clone

    root = clone(root)
    (root / "models.yaml").write_text(MODELS.replace("build: {max_batch_size: 8}}", "build: {max_batch_size: 8}, "
                                                     "validate: false}"))
    return root


@pytest.fixture
def shared(tmp_path: Path, standins) -> tuple[Path, dict[str, str], dict[str, str]]:
    """A store filled by a first clone; returns (store dir, env, {engine: key})."""
    store = tmp_path / "store"
    store.mkdir()
    env = {**standins(gpus=[H100, H100]), "BUILDLIB_STORE": str(store)}
    first = _clone(tmp_path / "first")
    r = doit(first, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    keys = {e: v["key"] for e, v in plan(first, env).items()}
    return store, env, keys


def _second(tmp_path: Path, env: dict[str, str]) -> tuple[Path, str, set[str]]:
    root = _clone(tmp_path / "second")
    before = len(built_engines(env))
    r = doit(root, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    return root, r.stdout, set(built_engines(env)[before:])


def test_an_entry_passed_off_as_another_engine_is_refused(tmp_path, shared):
    store, env, keys = shared
    a, b = keys["llama/sm90/tp1-pp1"], keys["mistral/sm90/tp1-pp1"]
    shutil.rmtree(store / b)
    shutil.copytree(store / a, store / b)  # llama's engine under mistral's key, the manifest edited to match
    m = json.loads((store / b / "manifest.json").read_text())
    m["key"] = b
    (store / b / "manifest.json").write_text(json.dumps(m))
    root, out, built = _second(tmp_path, env)
    assert "its fields do not hash to its key" in out and built == {"mistral/sm90/tp1-pp1"}
    assert json.loads((root / "engines/mistral/sm90/tp1-pp1/manifest.json").read_text())["key"] == b
    assert plan(root, env)["mistral/sm90/tp1-pp1"]["state"] == "fresh"


def test_files_beyond_the_manifest_are_never_restored_and_verify_lists_them(tmp_path, shared):
    store, env, keys = shared
    k = keys["llama/sm90/tp1-pp1"]
    (store / k / "extra.sh").write_text("#!/bin/sh\nrm -rf ~\n")
    root, _, built = _second(tmp_path, env)
    assert built == set() and not (root / "engines/llama/sm90/tp1-pp1/extra.sh").exists()
    r = doit(root, "verify", env=env)
    assert r.returncode == 1
    assert f"{store}/{k}/extra.sh: unexpected" in r.stdout


@pytest.mark.parametrize("what", ["link", "log"])
def test_a_link_or_an_altered_log_in_an_entry_is_refused_and_rebuilt(tmp_path, shared, what):
    store, env, keys = shared
    k = keys["llama/sm90/tp1-pp1"]
    if what == "link":  # same bytes, but behind a link to a file outside the entry
        outside = tmp_path / "outside.engine"
        shutil.copyfile(store / k / "rank0.engine", outside)
        (store / k / "rank0.engine").unlink()
        (store / k / "rank0.engine").symlink_to(outside)
    else:
        log = store / k / "build.log"
        log.write_text(log.read_text().replace("Engine", "Engone"))
    root, out, built = _second(tmp_path, env)
    assert built == {"llama/sm90/tp1-pp1"}, out
    assert "corrupt" in out
    assert plan(root, env)["llama/sm90/tp1-pp1"]["state"] == "fresh"
    assert not (root / "engines/llama/sm90/tp1-pp1/rank0.engine").is_symlink()


def test_verify_reads_every_byte(tmp_path, shared):
    store, env, _ = shared
    root, _, built = _second(tmp_path, env)
    assert built == set()
    r = doit(root, "verify", env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"verified {len(ENGINES)} engine dir(s) and {len(ENGINES)} entries of {store}: all intact" in r.stdout
    eng = root / "engines/llama/sm90/tp2-pp1/rank1.engine"
    st = eng.stat()
    data = bytearray(eng.read_bytes())
    data[-1] ^= 0xFF
    eng.write_bytes(bytes(data))
    os.utime(eng, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size and mtime: only reading finds it
    (root / "engines/mistral/sm90/tp1-pp1/notes.txt").write_text("?")
    r = doit(root, "verify", "--no-store", env=env)
    assert r.returncode == 1
    assert f"{eng}: altered" in r.stdout
    assert f"{root / 'engines/mistral/sm90/tp1-pp1/notes.txt'}: unexpected" in r.stdout
    assert "2 problem(s)" in r.stdout
