"""Warm build caches through the store (#28): a fresh clone's build starts from the timing cache another host pushed
(the stand-in trtllm-build keeps every entry it read and adds its own); under a trust policy only a trusted signer's
cache is used; a corrupt or planted one is said in one line and the build runs cold; the key never changes."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

from tests.conftest import doit, plan, write_project
from tests.test_store_trust import identity, keypair

MODELS = """\
defaults: {backend: trtllm, archs: [sm90], validate: false, build: {max_batch_size: BATCH}}
models:
  - name: llama
    checkpoint: ckpt/llama
"""


def clone(root: Path, batch: int, seed: int) -> Path:
    return write_project(root, MODELS.replace("BATCH", str(batch)), {"llama": {"shards": 1, "seed": seed}})


def timing_entries(root: Path) -> list[str]:
    (cache,) = (root / ".buildlib/timing-cache").glob("*.cache")
    return json.loads(cache.read_bytes().split(b"\n", 1)[1])["entries"]


def cache_archive(store: Path) -> Path:
    (found,) = store.rglob(".caches/timing/*.tar.gz")
    return found


def test_a_fresh_clone_builds_from_the_cache_another_host_pushed(tmp_path: Path, standins):
    (tmp_path / "store").mkdir()
    key, pub = keypair(tmp_path / "keys", "ci")
    env = {**standins(), "BUILDLIB_STORE": str(tmp_path / "store"), "BUILDLIB_STORE_SIGN_KEY": str(key),
           "BUILDLIB_STORE_TRUST": str(pub)}
    a = clone(tmp_path / "a", batch=8, seed=1)
    r = doit(a, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "build cache timing/NVIDIA-H100-80GB-HBM3-trt" in r.stdout and ": none in the store" in r.stdout
    assert ": shared " in r.stdout
    archive = cache_archive(tmp_path / "store")
    assert f".signers/{identity(pub)}/.caches/timing/" in str(archive) and archive.with_name(archive.name + ".sig")

    b = clone(tmp_path / "b", batch=16, seed=2)
    r = doit(b, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert ": fetched " in r.stdout, r.stdout
    assert [e.split("|")[1] for e in timing_entries(b)] == ["16", "8"]  # started from a's cache

    # A cache that is not what was signed: refused, the build runs cold, the key is what it was.
    data = archive.read_bytes()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("cache")
        payload = b"STANDIN-TRT-TIMING-CACHE\n" + json.dumps({"entries": ["planted|1|1|1"]}).encode()
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    archive.write_bytes(buf.getvalue())
    c = clone(tmp_path / "c", batch=16, seed=4)
    before = {e: v["key"] for e, v in plan(c, env).items()}
    r = doit(c, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert ": refused (" in r.stdout, r.stdout
    assert timing_entries(c) == [e for e in timing_entries(b) if "|16|" in e]  # cold: only its own entry
    after = plan(c, env)
    assert {e: v["key"] for e, v in after.items()} == before and {v["state"] for v in after.values()} == {"fresh"}

    # No policy, a corrupt archive: said, not used, the build succeeds.
    archive.write_bytes(data[: len(data) // 2])
    d = clone(tmp_path / "d", batch=16, seed=3)
    plain = {k: v for k, v in env.items() if k != "BUILDLIB_STORE_TRUST"}
    r = doit(d, env=plain)
    assert r.returncode == 0 and ": not used (" in r.stdout, r.stdout + r.stderr
