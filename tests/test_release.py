"""From store to serving (#27), through the public commands: engines built on stand-in hosts of two archs and pushed
signed to a store (a directory, and S3 on the moto server), `doit release`, then `enginebuild fetch` in dirs with no
checkout on stand-in nodes (2 x H100, 1 x A100, 1 x L40S, an A100 in MIG mode, no GPU): each gets the engine that
fits or one line saying why not; `current` swaps atomically under a polling reader; partial releases, rollback, gc;
tampered or unsigned records and planted engines refused under a trust policy; fetch imports no torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import A100, H100, REPO, doit, plan, write_hf_checkpoint, write_project
from tests.test_store_trust import identity, keypair, plant, store_url  # noqa: F401 - store_url is a fixture

L40S = {"name": "NVIDIA L40S", "compute_cap": "8.9", "memory_total_mib": 46068}
MIG_A100 = {**A100, "mig": True}
MODELS = """\
defaults: {backend: trtllm, validate: true, build: {max_batch_size: 8}}
models:
  - name: llama
    checkpoint: ckpt/llama
    archs: [sm80, sm90]
    parallel: [{tp: 1, pp: 1}, {tp: 2, pp: 1}]
"""
ENGINES = {f"llama/{a}/tp{t}-pp1" for a in ("sm80", "sm90") for t in (1, 2)}
ENGINEBUILD = str(Path(sys.executable).with_name("enginebuild"))
READER = r"""
import json, os, sys
dest, stop = sys.argv[1], sys.argv[2]
seen, bad = set(), []
n = 0
while not os.path.exists(stop) or n == 0:
    cur = os.path.join(dest, "current")
    try:
        # as a server does: resolve `current` once, then read that engine (resolving it per file would mix two
        # engines when the swap falls between two reads, and fail the test for the reader's race, not the fetch's)
        real = os.path.join(dest, os.readlink(cur))
        m = json.load(open(os.path.join(real, "manifest.json")))
        for rel, (size, _) in m["outputs"].items():
            if os.stat(os.path.join(real, rel)).st_size != size:
                bad.append(f"{rel} size")
        seen.add(m["key"])
    except FileNotFoundError as e:
        if os.path.lexists(cur):
            bad.append(f"partial: {e.filename}")
    n += 1
print(json.dumps({"reads": n, "keys": sorted(seen), "bad": bad[:5]}))
"""


def clone(root: Path) -> Path:
    return write_project(root, MODELS, {"llama": {"shards": 2, "seed": 1}})


def node_env(base: dict[str, str], gpus: list[dict]) -> dict[str, str]:
    """A serving node: the stand-in nvidia-smi on PATH and its GPUs; no stand-in TensorRT-LLM, no checkout."""
    env = {k: v for k, v in base.items() if k not in ("PYTHONPATH", "STANDIN_TRTLLM_LOG")
           and not (k.startswith("BUILDLIB_") and k != "BUILDLIB_S3_ENDPOINT")}
    env["STANDIN_GPUS"] = json.dumps(gpus)
    return env


def fetch(node: Path, env: dict[str, str], url: str, *args: str,
          channel: str = "canary") -> subprocess.CompletedProcess:
    node.mkdir(parents=True, exist_ok=True)
    return subprocess.run([ENGINEBUILD, "fetch", "--store", url, "--channel", channel, "--model", "llama", *args],
                          cwd=node, env=env, capture_output=True, text=True, timeout=300)


def current_key(dest: Path) -> str:
    return json.loads((dest / "current" / "manifest.json").read_text())["key"]


@pytest.fixture
def fleet(tmp_path: Path, standins, store_url: str):  # noqa: F811 - the fixture imported above
    """Two build hosts (2 x H100, 2 x A100) that built, validated and pushed signed engines, and the keys."""
    key, pub = keypair(tmp_path / "keys", "main-ci")
    base = {**standins(gpus=[H100, H100]), "BUILDLIB_STORE": store_url, "BUILDLIB_STORE_SIGN_KEY": str(key),
            "BUILDLIB_STORE_TRUST": str(pub)}
    hosts = {"sm90": (clone(tmp_path / "sm90-host"), base),
             "sm80": (clone(tmp_path / "sm80-host"), {**base, "STANDIN_GPUS": json.dumps([A100, A100])})}
    for arch, (root, env) in hosts.items():
        r = doit(root, env=env)
        assert r.returncode == 0, r.stdout + r.stderr
        assert r.stdout.count("pushed ") == 2, (arch, r.stdout)
    return {"url": store_url, "key": key, "pub": pub, "hosts": hosts, "base": base, "tmp": tmp_path}


def test_a_release_reaches_nodes_of_two_archs_and_rolls_back(fleet):
    url, pub, tmp = fleet["url"], str(fleet["pub"]), fleet["tmp"]
    root, env = fleet["hosts"]["sm90"]
    r = doit(root, "release", "canary", env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "released  canary llama: " in r.stdout and "left out" not in r.stdout, r.stdout
    assert {k: v["channels"] for k, v in plan(root, env).items()} == {e: ["canary"] for e in ENGINES}
    status = doit(root, "status", env=env).stdout
    assert "[canary] fresh" in status and "[canary] restorable" in status, status  # sm80: built on the other host
    again = doit(root, "release", "canary", env=env)
    assert again.returncode == 0 and "unchanged canary llama" in again.stdout, again.stdout

    nodes = {"h100x2": [H100, H100], "a100": [A100], "l40s": [L40S], "mig": [MIG_A100], "cpu": []}
    got = {n: fetch(tmp / n, node_env(fleet["base"], g), url, "--dest", str(tmp / n / "engines"), "--trust", pub)
           for n, g in nodes.items()}
    keys = {e: v["key"] for e, v in plan(root, env).items()}
    h100 = got["h100x2"]
    assert h100.returncode == 0, h100.stderr
    assert "llama/sm90/tp2-pp1: sm90 tp2 (arch sm90, NVIDIA H100 80GB HBM3, 2 of 2 GPUs)" in h100.stdout
    assert "signed by main-ci" in h100.stdout
    assert current_key(tmp / "h100x2/engines") == keys["llama/sm90/tp2-pp1"]
    assert os.readlink(tmp / "h100x2/engines/current") == keys["llama/sm90/tp2-pp1"]
    assert got["a100"].returncode == 0 and current_key(tmp / "a100/engines") == keys["llama/sm80/tp1-pp1"]
    offer = "channel canary has llama for sm80 (tp1, tp2) and sm90 (tp1, tp2)"
    for n, what in (("l40s", "1 x NVIDIA L40S (sm89)"), ("mig", "1 x NVIDIA A100-SXM4-80GB (sm80, MIG mode)")):
        assert got[n].returncode == 2, got[n].stdout
        assert got[n].stderr.strip().splitlines()[-1] == f"error: {offer}; this node has {what}", got[n].stderr
        assert not (tmp / n / "engines/current").exists()
    assert got["cpu"].returncode == 2 and f"error: {offer}; this node has no GPU (CPU " in got["cpu"].stderr

    listing = fetch(tmp / "h100x2", node_env(fleet["base"], nodes["h100x2"]), url, "--list", "--trust", pub)
    lines = {ln.split()[1]: ln.split()[0] for ln in listing.stdout.splitlines()[1:]}
    assert lines == {"llama/sm90/tp2-pp1": "chosen", "llama/sm90/tp1-pp1": "fits", "llama/sm80/tp1-pp1": "no",
                     "llama/sm80/tp2-pp1": "no"}, listing.stdout
    pinned = fetch(tmp / "h100x2", node_env(fleet["base"], nodes["h100x2"]), url, "--list", "--tp", "1")
    assert "chosen llama/sm90/tp1-pp1" in " ".join(pinned.stdout.split()), pinned.stdout

    same = fetch(tmp / "h100x2", node_env(fleet["base"], nodes["h100x2"]), url, "--dest",
                 str(tmp / "h100x2/engines"), "--trust", pub)
    assert same.returncode == 0 and same.stdout.startswith("up to date: ") and "nothing transferred" in same.stdout

    # The sm90 host's checkpoint changes; only its engines are rebuilt and released: sm80 keeps serving its own.
    write_hf_checkpoint(root / "ckpt/llama", shards=2, seed=7)
    assert doit(root, env=env).returncode == 0
    r = doit(root, "release", "canary", "llama/sm90/*", env=env)
    assert r.returncode == 0 and "released  canary llama" in r.stdout, r.stdout
    new_keys = {e: v["key"] for e, v in plan(root, env).items()}
    assert new_keys["llama/sm90/tp2-pp1"] != keys["llama/sm90/tp2-pp1"]

    reader_stop = tmp / "stop"
    reader = subprocess.Popen([sys.executable, "-c", READER, str(tmp / "h100x2/engines"), str(reader_stop)],
                              stdout=subprocess.PIPE, text=True)
    try:
        swapped = fetch(tmp / "h100x2", node_env(fleet["base"], nodes["h100x2"]), url, "--dest",
                        str(tmp / "h100x2/engines"), "--trust", pub)
        assert swapped.returncode == 0 and "fetched " in swapped.stdout, swapped.stdout + swapped.stderr
        assert current_key(tmp / "h100x2/engines") == new_keys["llama/sm90/tp2-pp1"]
        assert (tmp / "h100x2/engines" / keys["llama/sm90/tp2-pp1"]).is_dir()  # the previous one stays
        a100 = fetch(tmp / "a100", node_env(fleet["base"], [A100]), url, "--dest", str(tmp / "a100/engines"),
                     "--trust", pub)
        assert a100.returncode == 0 and a100.stdout.startswith("up to date: "), a100.stdout

        r = doit(root, "release", "canary", "--rollback", "llama", env=env)
        assert r.returncode == 0 and "rolled back canary for llama" in r.stdout, r.stdout + r.stderr
        back = fetch(tmp / "h100x2", node_env(fleet["base"], nodes["h100x2"]), url, "--dest",
                     str(tmp / "h100x2/engines"), "--trust", pub)
        assert back.returncode == 0 and "already here, nothing transferred" in back.stdout, back.stdout
        assert current_key(tmp / "h100x2/engines") == keys["llama/sm90/tp2-pp1"]
    finally:
        reader_stop.touch()
        out, _ = reader.communicate(timeout=60)
    seen = json.loads(out)
    assert seen["bad"] == [] and seen["reads"] > 0, seen
    assert set(seen["keys"]) <= {keys["llama/sm90/tp2-pp1"], new_keys["llama/sm90/tp2-pp1"]}

    # gc keeps what a channel serves and what its rollback would restore, though models.yaml wants other keys now.
    gc = doit(root, "gc", "--store", url, env=env)
    assert gc.returncode == 0, gc.stdout + gc.stderr
    for e in ("llama/sm90/tp2-pp1", "llama/sm80/tp1-pp1"):
        assert keys[e] not in gc.stdout, gc.stdout


def test_tampered_unsigned_or_replayed_releases_and_planted_engines_are_refused(fleet):
    url, pub, tmp = fleet["url"], str(fleet["pub"]), fleet["tmp"]
    root, env = fleet["hosts"]["sm90"]
    h100 = node_env(fleet["base"], [H100, H100])
    unsigned = {k: v for k, v in env.items() if k != "BUILDLIB_STORE_SIGN_KEY"}
    r = doit(root, "release", "prod", env=unsigned)
    assert r.returncode == 0 and "are unsigned" in r.stderr, r.stdout + r.stderr
    no = fetch(tmp / "n1", h100, url, "--dest", str(tmp / "n1/engines"), "--trust", pub, channel="prod")
    assert no.returncode == 2 and "its only records are not signed by a key the trust policy names" in no.stderr
    assert not (tmp / "n1/engines/current").exists()
    assert fetch(tmp / "n1", h100, url, "--dest", str(tmp / "n1/engines"), channel="prod").returncode == 0  # no policy

    assert doit(root, "release", "canary", env=env).returncode == 0
    first = fetch(tmp / "n2", h100, url, "--dest", str(tmp / "n2/engines"), "--trust", pub)
    assert first.returncode == 0, first.stderr
    # A newer release, then its record removed: the node that applied it refuses the older one now in force.
    write_hf_checkpoint(root / "ckpt/llama", shards=2, seed=9)
    assert doit(root, env=env).returncode == 0
    assert doit(root, "release", "canary", "llama/sm90/*", env=env).returncode == 0
    assert fetch(tmp / "n2", h100, url, "--dest", str(tmp / "n2/engines"), "--trust", pub).returncode == 0
    records = channel_records(url, identity(fleet["pub"]), "canary")
    newest = records[-1]
    saved = read_object(url, newest)
    delete_object(url, newest)
    old = fetch(tmp / "n2", h100, url, "--dest", str(tmp / "n2/engines"), "--trust", pub)
    assert old.returncode == 2 and "this node applied the newer release" in old.stderr, old.stderr
    # The record edited (a key swapped for another engine's): its signature no longer matches.
    rec = json.loads(saved)
    rec["engines"][0]["key"], rec["engines"][1]["key"] = rec["engines"][1]["key"], rec["engines"][0]["key"]
    write_object(url, newest, json.dumps(rec, sort_keys=True, indent=1).encode())
    bad = fetch(tmp / "n3", h100, url, "--dest", str(tmp / "n3/engines"), "--trust", pub)
    assert bad.returncode == 2 and "refused release record" in bad.stderr and "does not match" in bad.stderr, \
        bad.stderr
    write_object(url, newest, saved)
    # An engine planted in the signer's own namespace under the released key: refused, nothing swapped in.
    sm90 = next(e for e in json.loads(saved)["engines"] if e["engine"] == "llama/sm90/tp2-pp1")
    plant(url, root / "engines/llama/sm90/tp2-pp1", tmp / "attacker", f".signers/{identity(fleet['pub'])}")
    planted = fetch(tmp / "n4", h100, url, "--dest", str(tmp / "n4/engines"), "--trust", pub)
    assert planted.returncode == 2 and f"refused store entry {url}/{sm90['key']}" in planted.stderr, planted.stderr
    assert not (tmp / "n4/engines/current").exists() and not list((tmp / "n4/engines").glob(f"{sm90['key']}*"))


def test_fetch_imports_no_toolchain_and_refuses_a_dir_of_other_files(fleet, tmp_path: Path):
    url, pub = fleet["url"], str(fleet["pub"])
    root, env = fleet["hosts"]["sm90"]
    assert doit(root, "release", "canary", env=env).returncode == 0
    code = ("import sys; from buildlib.cli.enginebuild import main; rc = main(sys.argv[1:]); "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'doit', 'tensorrt_llm', 'transformers', "
            "'ray'}), rc)")
    node = tmp_path / "bare-node"
    node.mkdir()
    r = subprocess.run([sys.executable, "-c", code, "fetch", "--store", url, "--channel", "canary", "--model", "llama",
                        "--dest", str(node / "engines"), "--trust", pub], cwd=node, capture_output=True, text=True,
                       env=node_env(fleet["base"], [H100]))
    assert r.returncode == 0 and r.stdout.strip().splitlines()[-1] == "[] 0", r.stdout + r.stderr
    # examples/serving/entrypoint.sh: fetch, then exec the server command, which finds the engine at DEST/current.
    server = "import json, sys; print('serving', json.load(open(sys.argv[1] + '/manifest.json'))['key'])"
    env = {**node_env(fleet["base"], [H100, H100]), "ENGINE_STORE": url, "ENGINE_CHANNEL": "canary",
           "ENGINE_MODEL": "llama", "ENGINE_DEST": str(tmp_path / "pod/models"), "ENGINE_TRUST": pub}
    env["PATH"] = f"{Path(ENGINEBUILD).parent}{os.pathsep}{env['PATH']}"  # the image has enginebuild on PATH
    r = subprocess.run(["sh", str(REPO / "examples/serving/entrypoint.sh"), sys.executable, "-c", server,
                        str(tmp_path / "pod/models/current")], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.splitlines()[-1] == f"serving {current_key(tmp_path / 'pod/models')}"
    assert "llama/sm90/tp2-pp1" in r.stdout
    pod = yaml.safe_load((REPO / "examples/serving/k8s-initcontainer.yaml").read_text())["spec"]["template"]["spec"]
    args = pod["initContainers"][0]["args"]
    from buildlib.cli.enginebuild import parser

    got = parser().parse_args(args[1:])
    assert args[0] == "enginebuild" and got.dest == pod["containers"][0]["args"][1].removesuffix("/current")
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("not enginebuild's")
    r = fetch(tmp_path / "n", node_env(fleet["base"], [H100]), url, "--dest", str(theirs))
    assert r.returncode == 2 and "holds files that are not enginebuild's" in r.stderr
    assert sorted(p.name for p in theirs.iterdir()) == ["notes.txt"]


def channel_records(url: str, ident: str, channel: str) -> list[str]:
    """The record objects (paths or S3 keys) of a channel's llama releases in a signer's namespace, oldest first."""
    sub = f".signers/{ident}/.channels/{channel}/llama"
    if not url.startswith("s3://"):
        return sorted(str(p) for p in (Path(url) / sub).glob("*.json"))
    bucket, prefix = url[5:].split("/", 1)
    s3 = _s3()
    got = s3.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/{sub}/").get("Contents", [])
    return sorted(o["Key"] for o in got if o["Key"].endswith(".json"))


def _s3():
    import boto3

    return boto3.client("s3", endpoint_url=os.environ["BUILDLIB_S3_ENDPOINT"])


def read_object(url: str, obj: str) -> bytes:
    if not url.startswith("s3://"):
        return Path(obj).read_bytes()
    return _s3().get_object(Bucket=url[5:].split("/", 1)[0], Key=obj)["Body"].read()


def write_object(url: str, obj: str, data: bytes) -> None:
    if not url.startswith("s3://"):
        Path(obj).write_bytes(data)
    else:
        _s3().put_object(Bucket=url[5:].split("/", 1)[0], Key=obj, Body=data)


def delete_object(url: str, obj: str) -> None:
    if not url.startswith("s3://"):
        Path(obj).unlink()
    else:
        _s3().delete_object(Bucket=url[5:].split("/", 1)[0], Key=obj)


def test_the_choice_among_engines_and_its_reasons():
    from buildlib.host.node import Node, NodeGpu
    from buildlib.rollout.fit import choose, nothing_fits

    def eng(arch: str, tp: int, pp: int = 1, gpu_name: str | None = None) -> dict:
        return {"engine": f"m/{arch}/tp{tp}-pp{pp}" + (f"/{gpu_name}" if gpu_name else ""), "arch": arch, "tp": tp,
                "pp": pp, "gpu_name": gpu_name, "key": f"k{arch}{tp}{pp}{gpu_name}"}

    h100 = "NVIDIA H100 80GB HBM3"
    node = Node(tuple(NodeGpu(i, h100, "sm90", 81559, False) for i in range(4)), "x86_64-avx2", "test")
    rel = (eng("sm90", 1), eng("sm90", 2), eng("sm90", 1, 2), eng("sm90", 8), eng("sm90", 1, gpu_name=h100),
           eng("x86_64-avx2", 1))
    best, fits = choose(rel, node)
    assert best is not None and best.engine["gpu_name"] == h100  # the exact GPU before the arch, fewer GPUs or not
    assert best.why == f"sm90 tp1 (exact GPU {h100}, 1 of 4 GPUs)"
    assert [f.ok for f in fits] == [True, True, True, False, True, True]
    assert fits[3].why == f"sm90 tp8: needs 8 whole sm90 GPUs; this node has 4 x {h100} (sm90)"
    best, _ = choose(rel[:4], node)
    assert best is not None and (best.engine["tp"], best.engine["pp"]) == (2, 1)  # most GPUs, tp before pp
    best, _ = choose(rel[:4], node, pp=2)
    assert best is not None and (best.engine["tp"], best.engine["pp"]) == (1, 2)
    best, fits = choose(rel[:4], node, tp=4)
    assert best is None and fits[0].why == "sm90 tp1: not the pinned tp4"
    assert nothing_fits("prod", "m", rel[:4], node, tp=4) == \
        f"channel prod has m for sm90 (tp1, tp2, tp1-pp2, tp8) (pinned: tp4); this node has 4 x {h100} (sm90)"
    cpu = Node((), "x86_64-avx2", "no NVIDIA driver")
    best, _ = choose(rel, cpu)
    assert best is not None and best.why == "x86_64-avx2 tp1 (CPU x86_64-avx2, this node's ISA)"
    other = Node((), "x86_64-avx512", "no NVIDIA driver")
    assert choose(rel, other)[0] is None
    assert nothing_fits("prod", "m", rel[5:], other) == \
        "channel prod has m for x86_64-avx2 (tp1); this node has no GPU (CPU x86_64-avx512)"


def test_release_needs_a_writable_store_and_a_channel_name(tmp_path: Path, standins):
    root = clone(tmp_path / "repo")
    (tmp_path / "store").mkdir()
    env = {**standins(), "BUILDLIB_STORE": str(tmp_path / "store"), "BUILDLIB_STORE_PUSH": "0"}
    r = doit(root, "release", "prod", env=env)
    assert r.returncode == 2 and "read-only for this run" in r.stderr and "Traceback" not in r.stderr, r.stderr
    r = doit(root, "release", "../prod", env={**env, "BUILDLIB_STORE_PUSH": "1"})
    assert r.returncode == 2 and "channel '../prod'" in r.stderr, r.stderr
    r = doit(root, "release", "prod", env={**env, "BUILDLIB_STORE_PUSH": "1"})
    assert r.returncode == 2 and "nothing to release to prod" in r.stderr, r.stdout + r.stderr
    assert "left out  llama/sm90/tp1-pp1: missing" in r.stdout, r.stdout
    assert not any((tmp_path / "store").rglob("*.json")), "a release with nothing in it records nothing"
