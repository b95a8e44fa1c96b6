"""A store nobody can poison (#26), through the real doit CLI, with real EC keys and the real model-signing library,
on a directory store and on S3 (the moto server): the CREEP attack end to end (an untrusted writer plants a
self-consistent entry under the key a trusted run will compute), each refusal, read-only runs, and validation
records that travel."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.conftest import built_engines, doit, plan, write_project

MODELS = """\
defaults: {backend: trtllm, archs: [sm90], validate: false, build: {max_batch_size: 8}}
models:
  - name: llama
    checkpoint: ckpt/llama
  - name: mistral
    checkpoint: ckpt/mistral
"""
ENGINES = {"llama/sm90/tp1-pp1", "mistral/sm90/tp1-pp1"}
PLANTED = b"planted by an untrusted writer"


def clone(root: Path) -> Path:
    return write_project(root, MODELS, {"llama": {"shards": 2, "seed": 1},
                                        "mistral": {"shards": 1, "seed": 2, "arch": "MistralForCausalLM"}})


def keypair(d: Path, name: str) -> tuple[Path, Path]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{name}.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                      serialization.NoEncryption()))
    (d / f"{name}.pub").write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                                  serialization.PublicFormat.SubjectPublicKeyInfo))
    return d / f"{name}.pem", d / f"{name}.pub"


@pytest.fixture(params=["dir", "s3"])
def store_url(request, tmp_path: Path) -> str:
    if request.param == "dir":
        (tmp_path / "store").mkdir()
        return str(tmp_path / "store")
    endpoint = request.getfixturevalue("s3_env")
    import boto3

    bucket = f"engines-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
    return f"s3://{bucket}/fleet"


def store_state(url: str) -> dict[str, str]:
    """Every object of the store and a digest of its bytes: what 'unchanged' means, byte for byte."""
    if not url.startswith("s3://"):
        root = Path(url)
        return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(root.rglob("*")) if p.is_file()}
    import os

    import boto3

    bucket, prefix = url[5:].split("/", 1)
    s3 = boto3.client("s3", endpoint_url=os.environ["BUILDLIB_S3_ENDPOINT"])
    out = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for o in page.get("Contents", ()):
            out[o["Key"]] = hashlib.sha256(s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()).hexdigest()
    return out


PLANT = r"""
import json, shutil, sys
from pathlib import Path
from buildlib.core.manifest import read_manifest, record_outputs, write_manifest
from buildlib.store.open import open_store
url, engine, work, scope = sys.argv[1:5]
src = Path(work) / "entry"
shutil.copytree(engine, src)
for name in ("validation.json", "validate.log", "model.sig"):
    (src / name).unlink(missing_ok=True)
(src / "rank0.engine").write_bytes(b"planted by an untrusted writer")
m = read_manifest(src)
m.outputs = record_outputs(src, None)  # the digests rewritten to match: self-consistent
write_manifest(src, m)
store = open_store(url, Path(work))
for where in ["", scope]:
    s = store.scoped(where) if where else store
    if s.has(m.key):
        s.remove(m.key)
    print(s.push(m.key, src))
"""


def plant(url: str, engine_dir: Path, work: Path, scope: str) -> None:
    """An untrusted writer with store credentials: an engine of the same key with a file replaced and the manifest's
    digests rewritten to match, pushed at the top level and into the trusted signer's own namespace."""
    work.mkdir(parents=True, exist_ok=True)
    r = subprocess.run([sys.executable, "-c", PLANT, url, str(engine_dir), str(work), scope], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr


def identity(pub: Path) -> str:
    from buildlib.store.signing import key_identity

    return key_identity(pub)


def test_the_poisoning_scenario_ends_with_the_genuine_engine(tmp_path: Path, standins, store_url: str):
    main_key, main_pub = keypair(tmp_path / "keys", "main-ci")
    base = {**standins(), "BUILDLIB_STORE": store_url}
    # 1. the attack, as it worked before: an untrusted job builds, plants, and an unguarded reader restores it
    attacker = clone(tmp_path / "pr-job")
    assert doit(attacker, env=base).returncode == 0
    for e in ENGINES:
        plant(store_url, attacker / "engines" / e, tmp_path / "plant" / e.replace("/", "-"),
              f".signers/{identity(main_pub)}")
    victim = clone(tmp_path / "unguarded")
    r = doit(victim, env={**base, "BUILDLIB_STORE_PUSH": "0"})
    assert r.returncode == 0 and r.stdout.count("restored ") == 2, r.stdout
    assert (victim / "engines/llama/sm90/tp1-pp1/rank0.engine").read_bytes() == PLANTED  # no policy: poisoned
    # 2. the trusted run refuses every planted entry, builds, and publishes its own signed entries
    trusted = {**base, "BUILDLIB_STORE_SIGN_KEY": str(main_key), "BUILDLIB_STORE_TRUST": str(main_pub)}
    main = clone(tmp_path / "main-job")
    n = len(built_engines(base))
    r = doit(main, env=trusted)
    assert r.returncode == 0, r.stdout + r.stderr
    refused = [line for line in r.stdout.splitlines() if line.startswith("refused store entry ")]
    assert len(refused) == 4, r.stdout  # per engine: the planted one in main-ci's namespace, and the unsigned one
    assert sum("unsigned" in line for line in refused) == 4 and all("/" in line.split()[3] for line in refused)
    assert sorted(built_engines(base)[n:]) == sorted(ENGINES)  # built here, not restored
    assert r.stdout.count(f"(signed by {identity(main_pub)})") == 2, r.stdout
    genuine = (main / "engines/llama/sm90/tp1-pp1/rank0.engine").read_bytes()
    assert genuine != PLANTED
    # 3. a read-only trusted reader gets the genuine engines and leaves the store byte for byte unchanged
    before = store_state(store_url)
    reader = clone(tmp_path / "serving")
    ro = {**base, "BUILDLIB_STORE_PUSH": "0", "BUILDLIB_STORE_TRUST": str(main_pub)}
    r = doit(reader, env=ro)
    assert r.returncode == 0 and r.stdout.count("restored ") == 2, r.stdout + r.stderr
    assert r.stderr.count("store is read-only for this run: built engines are not pushed") == 1, r.stderr
    assert (reader / "engines/llama/sm90/tp1-pp1/rank0.engine").read_bytes() == genuine
    assert store_state(store_url) == before
    # 4. the restored engine verifies with the standard tool alone
    edir = reader / "engines/llama/sm90/tp1-pp1"
    cli = Path(sys.executable).with_name("model_signing")
    v = subprocess.run([str(cli), "verify", "key", str(edir), "--signature", str(edir / "model.sig"),
                        "--public_key", str(main_pub)], capture_output=True, text=True)
    assert v.returncode == 0 and "Verification succeeded" in v.stdout, v.stdout + v.stderr


def test_each_untrusted_entry_is_refused_with_its_reason(tmp_path: Path, standins):
    """Unsigned, signed by another key, a signature that does not match the bytes, a signature copied from another
    entry: each one line naming the entry and the reason; the engine is built instead."""
    from buildlib.core.manifest import read_manifest, record_outputs, write_manifest

    store = tmp_path / "store"
    store.mkdir()
    _, main_pub = keypair(tmp_path / "keys", "main-ci")
    other_key, other_pub = keypair(tmp_path / "keys", "fork")
    base = {**standins(), "BUILDLIB_STORE": str(store)}
    # a signed entry of each engine by the fork's key (a real signature, by a key the policy does not name)
    assert doit(clone(tmp_path / "fork"), env={**base, "BUILDLIB_STORE_SIGN_KEY": str(other_key)}).returncode == 0
    fork_scope = store / ".signers" / identity(other_pub)
    mine = store / ".signers" / identity(main_pub)
    shutil.copytree(fork_scope, mine)  # copied into main-ci's namespace: fork's signatures, main-ci's place
    keys = {e: plan(tmp_path / "fork", base)[e]["key"] for e in ENGINES}
    llama, mistral = mine / keys["llama/sm90/tp1-pp1"], mine / keys["mistral/sm90/tp1-pp1"]
    # llama: its bytes changed after signing (the manifest's digests rewritten to match: still self-consistent)
    (llama / "rank0.engine").write_bytes(PLANTED)
    m = read_manifest(llama)
    m.outputs = record_outputs(llama, None)
    write_manifest(llama, m)
    # mistral: a valid signature of llama's entry copied over its own
    shutil.copyfile(fork_scope / keys["llama/sm90/tp1-pp1"] / "model.sig", mistral / "model.sig")
    trusted = {**base, "BUILDLIB_STORE_TRUST": str(main_pub), "BUILDLIB_STORE_PUSH": "0"}
    r = doit(clone(tmp_path / "main"), env=trusted)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = [line for line in r.stdout.splitlines() if line.startswith("refused store entry ")]
    fork = identity(other_pub)
    for e, key in keys.items():
        mine_line = next(line for line in lines if f"{identity(main_pub)}/{key}:" in line)
        assert "does not match its files" in mine_line or "signed by another key" in mine_line, mine_line
        assert any(f"{key}: signed by {fork}, which the trust policy does not name" in line for line in lines), e
        assert any(f"{key}: unsigned" in line for line in lines) is False  # nothing at the top level here
    assert "restored " not in r.stdout and r.stdout.count("building ") == 2
    # without a policy, plan says the entries are not authenticated, once
    text = doit(clone(tmp_path / "plain"), "plan", env=base).stdout
    assert text.count("are not authenticated (no trust policy)") == 1, text


def test_validation_records_travel_to_a_host_that_cannot_validate(tmp_path: Path, standins):
    store = tmp_path / "store"
    store.mkdir()
    main_key, main_pub = keypair(tmp_path / "keys", "main-ci")
    gpu = {**standins(), "BUILDLIB_STORE": str(store), "BUILDLIB_STORE_SIGN_KEY": str(main_key)}
    builder = clone(tmp_path / "gpu-box")
    builder_models = (builder / "models.yaml").read_text().replace("validate: false", "validate: true")
    (builder / "models.yaml").write_text(builder_models)
    assert doit(builder, env=gpu).returncode == 0
    laptop = clone(tmp_path / "laptop")
    (laptop / "models.yaml").write_text(builder_models)
    cpu = {**standins(gpus=[]), "BUILDLIB_STORE": str(store), "BUILDLIB_STORE_TRUST": str(main_pub),
           "BUILDLIB_STORE_PUSH": "0"}
    r = doit(laptop, env=cpu)
    assert r.returncode == 0 and r.stdout.count("restored ") == 2, r.stdout + r.stderr
    text = doit(laptop, "plan", env=cpu).stdout.splitlines()
    for e in ENGINES:
        line = next(x for x in text if f" {e} " in x + " ")
        assert line.startswith(f"fresh    {e}  (validated on NVIDIA H100 80GB HBM3 by main-ci, 20"), line
    row = plan(laptop, cpu)["llama/sm90/tp1-pp1"]
    assert row["state"] == "fresh" and row["validated_elsewhere"]["gpu"] == "NVIDIA H100 80GB HBM3"
    assert row["validated_elsewhere"]["signer"] == "main-ci" and row["validated_elsewhere"]["driver"]
    status = doit(laptop, "status", "--html", str(tmp_path / "status.html"), env=cpu).stdout
    assert "fresh: validated on NVIDIA H100 80GB HBM3" in status, status  # the text matrix cuts cells
    assert "fresh: validated on NVIDIA H100 80GB HBM3 by main-ci" in (tmp_path / "status.html").read_text()
    # a record no trusted key signed vouches for nothing: the engine stays blocked for validation here
    other = {**cpu, "BUILDLIB_STORE_TRUST": str(keypair(tmp_path / "keys", "fork")[1])}
    assert plan(laptop, other)["llama/sm90/tp1-pp1"]["state"] == "blocked"


def test_verify_and_gc_know_signatures(tmp_path: Path, standins):
    store = tmp_path / "store"
    store.mkdir()
    main_key, main_pub = keypair(tmp_path / "keys", "main-ci")
    base = {**standins(), "BUILDLIB_STORE": str(store)}
    assert doit(clone(tmp_path / "unsigned"), env=base).returncode == 0  # top-level, unsigned entries
    signed = clone(tmp_path / "main")
    policy = {**base, "BUILDLIB_STORE_TRUST": str(main_pub)}
    assert doit(signed, env={**policy, "BUILDLIB_STORE_SIGN_KEY": str(main_key)}).returncode == 0
    r = doit(signed, "verify", env=policy)
    assert r.returncode == 1 and r.stdout.count("unsigned; a reader with the trust policy refuses it") == 2, r.stdout
    assert "verified 2 engine dir(s) and 4 entries" in r.stdout, r.stdout
    key = plan(signed, base)["llama/sm90/tp1-pp1"]["key"]
    entry = store / ".signers" / identity(main_pub) / key
    (entry / "config.json").write_text("{}")  # a signed entry altered (its manifest now disagrees too)
    r = doit(signed, "verify", env=policy)
    assert f"{key}/config.json" in r.stdout or "does not match its files" in r.stdout, r.stdout
    # gc: a model leaves models.yaml; its entries go from every namespace
    (signed / "models.yaml").write_text(MODELS.split("  - name: mistral")[0])
    r = doit(signed, "gc", "--remove", "--store", str(store), env=policy)
    assert r.returncode == 0, r.stdout + r.stderr
    mistral = plan(tmp_path / "unsigned", base)["mistral/sm90/tp1-pp1"]["key"]
    assert not (store / mistral).exists() and not (store / ".signers" / identity(main_pub) / mistral).exists()
    assert (store / ".signers" / identity(main_pub) / key).is_dir()


def test_store_settings_in_models_yaml(tmp_path: Path, standins):
    """`store: {url, push: false, trust: [...]}` in models.yaml does what the environment does; a missing key file
    is one line naming models.yaml's line and field."""
    store = tmp_path / "store"
    store.mkdir()
    _, main_pub = keypair(tmp_path / "keys", "main-ci")
    root = clone(tmp_path / "repo")
    text = (root / "models.yaml").read_text()
    (root / "models.yaml").write_text(f"store: {{url: {store}, push: false, trust: [{main_pub}]}}\n" + text)
    r = doit(root, env=standins())
    assert r.returncode == 0 and "read-only" in r.stderr and not any(store.iterdir()), r.stdout + r.stderr
    (root / "models.yaml").write_text(f"store: {{url: {store}, sign: {{key: keys/nope.pem}}}}\n" + text)
    r = doit(root, "plan", env=standins())
    assert r.returncode == 2 and "models.yaml:1: store.sign.key: 'keys/nope.pem' is not a file" in r.stderr, r.stderr


def test_refit_sources_from_the_store_obey_the_policy(tmp_path: Path, standins):
    """A same-structure engine in the store is a refit source only where a trusted signer published it."""
    from tests.test_refit import new_weights

    store = tmp_path / "store"
    store.mkdir()
    _, main_pub = keypair(tmp_path / "keys", "main-ci")
    base = {**standins(), "BUILDLIB_STORE": str(store)}
    refit_models = MODELS.replace("    checkpoint: ckpt/llama\n", "    checkpoint: ckpt/llama\n    refit: true\n")
    untrusted = clone(tmp_path / "pr-job")
    (untrusted / "models.yaml").write_text(refit_models)
    assert doit(untrusted, env=base).returncode == 0  # pushes an unsigned entry and its structure note
    other = clone(tmp_path / "fine-tune")
    (other / "models.yaml").write_text(refit_models)
    new_weights(other / "ckpt/llama", seed=5)
    text = doit(other, "plan", env=base).stdout
    assert "the store has an engine of its structure: refit" in text, text  # no policy: it would refit from it
    text = doit(other, "plan", env={**base, "BUILDLIB_STORE_TRUST": str(main_pub)}).stdout
    assert "the store has an engine of its structure" not in text, text
