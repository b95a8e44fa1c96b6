"""Shared fixtures: a project dir with models.yaml, fake HF checkpoints and the stand-in toolchain."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
H100 = {"name": "NVIDIA H100 80GB HBM3", "compute_cap": "9.0", "memory_total_mib": 81559, "memory_used_mib": 0}
A100 = {"name": "NVIDIA A100-SXM4-80GB", "compute_cap": "8.0", "memory_total_mib": 81920, "memory_used_mib": 0}

LOADER_PYPROJECT = '[tool.doit]\nloader = "buildlib"\n'


def write_safetensors(path: Path, tensors: dict[str, bytes]) -> None:
    """A valid safetensors file of U8 tensors (u64-LE header length, JSON header, data), from stdlib."""
    header, offset = {}, 0
    for name, data in sorted(tensors.items()):
        header[name] = {"dtype": "U8", "shape": [len(data)], "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    path.write_bytes(len(blob).to_bytes(8, "little") + blob + b"".join(d for _, d in sorted(tensors.items())))


def write_hf_checkpoint(d: Path, shards: int = 2, seed: int = 0, arch: str = "LlamaForCausalLM") -> Path:
    """A Hugging Face-layout dir: config.json plus `model-0000i-of-0000n.safetensors` shards (valid
    safetensors; seed < 0: random tensor bytes)."""
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps({"architectures": [arch], "hidden_size": 64, "vocab_size": 256,
                                               "num_hidden_layers": 2, "max_position_embeddings": 4096}))
    for i in range(1, shards + 1):
        data = os.urandom(4096) if seed < 0 else bytes((seed + i + j) % 251 for j in range(4096))
        write_safetensors(d / f"model-{i:05d}-of-{shards:05d}.safetensors", {f"model.layers.{i}.weight": data})
    return d


def write_project(root: Path, models: str, checkpoints: dict[str, dict]) -> Path:
    """A checkout as a user has it, no engines: models.yaml, the loader's pyproject.toml, and a Hugging Face
    checkpoint under ckpt/<name> for each entry of `checkpoints` (write_hf_checkpoint's arguments)."""
    root.mkdir(parents=True, exist_ok=True)
    for name, kw in checkpoints.items():
        write_hf_checkpoint(root / "ckpt" / name, **kw)
    (root / "models.yaml").write_text(models)
    (root / "pyproject.toml").write_text(LOADER_PYPROJECT)
    return root


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """The whole tree under root, every path with its size and mtime: "nothing written" compares this, not
    the top-level names."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(dirpath, name)
            st = p.lstat()
            out[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return out


def doit(cwd: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """The real doit CLI in a subprocess (as a user types it)."""
    return subprocess.run([sys.executable, "-m", "doit", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def plan(cwd: Path, env: dict[str, str] | None = None) -> dict[str, dict]:
    r = doit(cwd, "plan", "--json", env=env)
    assert r.returncode == 0, r.stderr + r.stdout
    return {e["engine"]: e for e in json.loads(r.stdout)}


def copy_built(built: Path, env: dict[str, str], tmp_path: Path,
               logs: tuple[str, ...] = ("STANDIN_TRTLLM_LOG",)) -> tuple[Path, dict[str, str]]:
    """A test's own copy (tmp_path/repo) of a repo built once per module (engines, converted checkpoints, stat
    cache, doit db) and of the stand-in logs its env names in `logs`: a copied tree is judged by its manifests
    like any other, and each test counts only its own tool runs."""
    root = tmp_path / "repo"
    shutil.copytree(built, root, symlinks=True)
    copies = {var: str(tmp_path / Path(env[var]).name) for var in logs}
    for var, dest in copies.items():
        shutil.copy(env[var], dest)
    return root, {**env, **copies}


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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def moto_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real moto S3 server in its own process on a free loopback port, polled until it listens."""
    # Its request log goes to a file: a pipe nobody reads fills after a few hundred requests and then every
    # request blocks in the server's logging call.
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    for _ in range(3):  # the free port can be taken between probing and binding: retry on another
        port = _free_port()
        with log.open("wb") as err:
            proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                    stdout=subprocess.DEVNULL, stderr=err)
        for _ in range(600):  # up to ~30 s: each poll waits 50 ms on the process itself
            if _listening(port):
                break
            try:
                proc.wait(timeout=0.05)
                break  # it exited: port taken or moto broken
            except subprocess.TimeoutExpired:
                pass
        if proc.poll() is None and _listening(port):
            break
        proc.kill()
        proc.wait()
    else:
        pytest.fail(f"moto server did not start: {log.read_text(errors='replace')[-2000:]}")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def s3_env(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """AWS env pointing at moto (inherited by child pushers); isolated from ~/.aws."""
    for k in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("BUILDLIB_S3_ENDPOINT", moto_endpoint)
    return moto_endpoint
