"""Stand-in plumbing shared by the fake tensorrt_llm modules: GPU list, CUDA visibility, safetensors, digests."""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Iterable
from pathlib import Path
from typing import Any

DEFAULT_DRIVER = "580.95.05"
SAFETENSORS_DTYPES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                      "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}
PLAN_MAGIC = b"STANDIN-TRT-PLAN\x00"


def gpu_uuid(index: int, name: str) -> str:
    """A stable fake GPU UUID; nvidia-smi (stand-in) derives it the same way."""
    h = hashlib.sha256(f"{index}:{name}".encode()).hexdigest()
    return f"GPU-{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


def load_gpus() -> list[dict[str, Any]]:
    """Every GPU on the (pretend) box: $STANDIN_GPUS (JSON list) or $STANDIN_GPUS_FILE; neither means none."""
    raw = os.environ.get("STANDIN_GPUS")
    if raw is None and os.environ.get("STANDIN_GPUS_FILE"):
        raw = Path(os.environ["STANDIN_GPUS_FILE"]).read_text()
    entries = json.loads(raw) if raw else []
    gpus = []
    for i, g in enumerate(entries):
        name = str(g["name"])
        gpus.append({
            "index": i,
            "name": name,
            "compute_cap": str(g.get("compute_cap", "9.0")),
            "memory_total_mib": int(g.get("memory_total_mib", 81559)),
            "memory_used_mib": int(g.get("memory_used_mib", 0)),
            "uuid": str(g.get("uuid") or gpu_uuid(i, name)),
            "pci_bus_id": str(g.get("pci_bus_id") or f"00000000:{0x18 + 0x10 * i:02X}:00.0"),
            "driver_version": str(g.get("driver_version") or DEFAULT_DRIVER),
        })
    return gpus


def visible_gpus() -> list[dict[str, Any]]:
    """The GPUs CUDA would enumerate: CUDA_VISIBLE_DEVICES order; parsing stops at the first invalid entry."""
    gpus = load_gpus()
    spec = os.environ.get("CUDA_VISIBLE_DEVICES")
    if spec is None:
        return gpus
    out: list[dict[str, Any]] = []
    for token in (t.strip() for t in spec.split(",")):
        match = None
        if token.isdigit() and int(token) < len(gpus):
            match = gpus[int(token)]
        elif token.startswith("GPU-"):
            found = [g for g in gpus if g["uuid"].startswith(token)]
            match = found[0] if len(found) == 1 else None
        if match is None or match in out:
            break
        out.append(match)
    return out


def device_count() -> int:
    """torch.cuda.device_count() as the stand-ins see it."""
    return len(visible_gpus())


def sha256_files(paths: Iterable[Path], root: Path | None = None) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update((str(p.relative_to(root)) if root else p.name).encode() + b"\0")
        with open(p, "rb") as f:
            for chunk in iter(lambda f=f: f.read(1 << 20), b""):
                h.update(chunk)
        h.update(b"\0")
    return h.hexdigest()


def canonical(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()


def stream(seed: str, n: int) -> bytes:
    """n deterministic pseudo-random bytes from a seed (sha256 in counter mode)."""
    out = bytearray()
    i = 0
    while len(out) < n:
        out += hashlib.sha256(f"{seed}:{i}".encode()).digest()
        i += 1
    return bytes(out[:n])


def write_safetensors(path: Path, tensors: dict[str, tuple[str, list[int], bytes]],
                      metadata: dict[str, str] | None = None) -> None:
    """A valid safetensors file from stdlib: u64-LE header length, JSON header (space-padded to 8), raw data."""
    header: dict[str, Any] = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for name in sorted(tensors):
        dtype, shape, data = tensors[name]
        n = SAFETENSORS_DTYPES[dtype]
        for d in shape:
            n *= d
        if n != len(data):
            raise ValueError(f"{name}: {len(data)} bytes for {dtype}{shape} (expected {n})")
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for name in sorted(tensors):
            f.write(tensors[name][2])


def read_safetensors_header(path: Path) -> dict[str, Any]:
    """Parse and check a safetensors header (as safetensors.safe_open would); raises ValueError if malformed."""
    data = Path(path).read_bytes()
    if len(data) < 8:
        raise ValueError(f"{path}: too small to be a safetensors file")
    (n,) = struct.unpack("<Q", data[:8])
    if 8 + n > len(data):
        raise ValueError(f"{path}: header length {n} exceeds the file size")
    header = json.loads(data[8:8 + n])
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, stop = info["data_offsets"]
        if begin != end or stop < begin or info["dtype"] not in SAFETENSORS_DTYPES:
            raise ValueError(f"{path}: bad entry for tensor {name}")
        end = stop
    if 8 + n + end != len(data):
        raise ValueError(f"{path}: data size does not match the header")
    return header


def model_digest(structure_digest: str, ckpt_dir: str | None, world_size: int) -> str:
    """What every rank's engine shares and the stand-in runtime generates tokens from: the engine's structure
    (config and options) and the weights of every rank. A refit recomputes it with the new weights, so a refitted
    engine generates what an engine built from those weights generates."""
    h = hashlib.sha256(structure_digest.encode())
    if ckpt_dir is not None:
        files = [Path(ckpt_dir) / f"rank{r}.safetensors" for r in range(world_size)]
        h.update(sha256_files([f for f in files if f.is_file()]).encode())
    return h.hexdigest()


def tensor_shapes(path: Path) -> dict[str, list]:
    """{name: [dtype, shape]} of a safetensors file's tensors (header only)."""
    return {k: [v["dtype"], v["shape"]] for k, v in read_safetensors_header(path).items() if k != "__metadata__"}


def write_plan(path: Path, meta: dict[str, Any], payload_seed: str, size: int = 4096) -> None:
    """A fake serialized TensorRT engine: magic, u32-LE JSON meta length, meta, deterministic payload."""
    blob = canonical(meta)
    with open(path, "wb") as f:
        f.write(PLAN_MAGIC + struct.pack("<I", len(blob)) + blob + stream(payload_seed, size))


def read_plan_meta(path: Path) -> dict[str, Any] | None:
    """The meta of a fake engine, or None when the bytes are not one (as TensorRT would fail to deserialize)."""
    data = Path(path).read_bytes()
    if not data.startswith(PLAN_MAGIC):
        return None
    start = len(PLAN_MAGIC) + 4
    (n,) = struct.unpack("<I", data[len(PLAN_MAGIC):start])
    try:
        meta = json.loads(data[start:start + n])
    except ValueError:
        return None
    return meta if isinstance(meta, dict) else None
