"""What a Hugging Face checkpoint dir must be before any conversion or build reads it.

Checked where work is about to start (steps), not on a no-op: config.json parses as a JSON object,
every `*.safetensors` header parses and agrees with its file's size (only the header is read), and a
checkpoint that would run code it ships (config `auto_map`) or unpickle weights (`*.bin`, `*.pt`,
`*.pth`, `*.pkl`, `*.ckpt`) is refused unless models.yaml says `trust_remote_code: true` for the model.
Each problem is one line naming the file: a malformed shard never becomes a worker traceback.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from .errors import UserError

MAX_HEADER = 100 << 20  # the safetensors library's own limit on a header
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
SAFETENSORS_DTYPES = frozenset({"BOOL", "U8", "I8", "F8_E5M2", "F8_E4M3", "F8_E8M0", "I16", "U16", "F16", "BF16",
                                "I32", "U32", "F32", "I64", "U64", "F64", "F4", "F6_E2M3", "F6_E3M2", "C64"})


class BadCheckpoint(UserError):
    """A checkpoint file that no converter could read, or that would run untrusted code."""


def safetensors_header(path: Path) -> tuple[dict, int]:
    """A shard's parsed header and the offset of its data section (8 + header length); only the header is read.
    Raises OSError, or BadCheckpoint naming the file when it is not a safetensors shard."""
    with open(path, "rb") as f:
        size = f.seek(0, 2)
        f.seek(0)
        head = f.read(8)
        if len(head) < 8:
            raise BadCheckpoint(f"{path}: not a safetensors file ({size} bytes, no header)")
        (n,) = struct.unpack("<Q", head)
        if n > min(MAX_HEADER, size - 8):
            raise BadCheckpoint(f"{path}: not a safetensors file (header length {n} does not fit its {size} bytes)")
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise BadCheckpoint(f"{path}: safetensors header is not valid JSON") from None
    if not isinstance(header, dict):
        raise BadCheckpoint(f"{path}: safetensors header is not a JSON object")
    return header, 8 + n


def check_safetensors(path: Path) -> None:
    """The header of one shard: u64-LE length, a JSON object of {name: {dtype, shape, data_offsets}}, with
    offsets that tile the data exactly up to the end of the file (what safetensors' safe_open checks)."""
    header, start = safetensors_header(path)
    size = path.stat().st_size
    spans = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        ok = isinstance(info, dict) and info.get("dtype") in SAFETENSORS_DTYPES and \
            isinstance(info.get("shape"), list) and all(isinstance(d, int) and d >= 0 for d in info["shape"]) and \
            isinstance(info.get("data_offsets"), list) and len(info["data_offsets"]) == 2 and \
            all(isinstance(o, int) for o in info["data_offsets"])
        if not ok:
            raise BadCheckpoint(f"{path}: safetensors entry for tensor {name!r} is malformed")
        spans.append(tuple(info["data_offsets"]))
    end = 0
    for begin, stop in sorted(spans):
        if begin != end or stop < begin:
            raise BadCheckpoint(f"{path}: safetensors tensors overlap or leave gaps (at byte {begin})")
        end = stop
    if start + end != size:
        raise BadCheckpoint(f"{path}: safetensors header describes {start + end} bytes, the file has {size}")


def check_checkpoint(root: Path, files: list[str], trust_remote_code: bool) -> None:
    """config.json and every shard of a Hugging Face checkpoint dir (files: relpaths, from its digest)."""
    cfg = root / "config.json"
    try:
        config = json.loads(cfg.read_text())
    except FileNotFoundError:
        raise BadCheckpoint(f"{cfg}: missing; a Hugging Face checkpoint dir has a config.json") from None
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise BadCheckpoint(f"{cfg}: not valid JSON ({e})") from None
    if not isinstance(config, dict):
        raise BadCheckpoint(f"{cfg}: must be a JSON object")
    if not trust_remote_code:
        if "auto_map" in config:
            raise BadCheckpoint(f"{cfg}: asks for custom model code (auto_map); set `trust_remote_code: true` for "
                                "this model in models.yaml if you trust the checkpoint's code")
        pickled = [r for r in files if r.lower().endswith(PICKLE_SUFFIXES)]
        if pickled:
            raise BadCheckpoint(f"{root / pickled[0]}: pickle weights run code when loaded; convert them to "
                                "safetensors, or set `trust_remote_code: true` for this model in models.yaml")
    for rel in files:
        if rel.endswith(".safetensors"):
            check_safetensors(root / rel)
