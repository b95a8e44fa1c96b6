"""An AOTInductor weights-only update without torch: the new checkpoint's tensor bytes under the old weights' names.

A package compiled with `aot_inductor.package_constants_in_so = False` takes its constants at load time
(buildlib.backends.aoti keeps them in weights.safetensors, FQN -> tensor). When the new checkpoint holds every
constant under its Hugging Face name (the FQN less the `inner.` of the export wrapper) with the engine's dtype
and shape, the new weights.safetensors is those bytes copied: what `from_pretrained` in the engine's dtype would
load, bit for bit.

Optimization: no torch, no transformers, no model: a header per shard is parsed and each tensor's bytes are
streamed in fixed-size chunks (memory O(chunk) whatever the checkpoint size), in the doit process itself. On
the 2-core CI VM importing torch alone takes ~4 s; this path takes a fraction of a second for the tiny Llama.
Where it does not apply (a tied or renamed tensor, another dtype) `fast_refit` says why and the torch worker
(aoti_worker's refit op) does the update instead.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..core.checkpoint import BadCheckpoint, safetensors_header

PREFIX = "inner."  # aoti_worker._logits_only wraps the Hugging Face model as `inner`
CHUNK = 8 << 20


def _index(checkpoint: Path) -> dict[str, tuple[Path, dict, int]]:
    """tensor name -> (shard, header entry, data start), over every shard of the checkpoint."""
    out: dict[str, tuple[Path, dict, int]] = {}
    for shard in sorted(checkpoint.glob("*.safetensors")):
        header, start = safetensors_header(shard)
        for name, info in header.items():
            if name != "__metadata__":
                out[name] = (shard, info, start)
    return out


def fast_refit(old_weights: Path, checkpoint: Path, out: Path) -> str | None:
    """Write `out` (via a temp file and a rename) as old_weights with the checkpoint's bytes; None when done,
    else why this path does not apply (nothing is written then)."""
    try:
        want, _ = safetensors_header(old_weights)
        have = _index(checkpoint)
    except (OSError, ValueError, BadCheckpoint) as e:
        return f"cannot read the weights' headers ({e})"
    plan: list[tuple[str, dict, Path, int]] = []
    offset = 0
    header: dict[str, object] = {}
    for fqn, info in want.items():
        if fqn == "__metadata__":
            continue
        src = have.get(fqn.removeprefix(PREFIX))
        if src is None:
            return f"the checkpoint has no tensor named {fqn.removeprefix(PREFIX)}"
        shard, given, start = src
        if given["dtype"] != info["dtype"] or given["shape"] != info["shape"]:
            return (f"{fqn.removeprefix(PREFIX)} is {given['dtype']} {given['shape']} in the checkpoint, "
                    f"{info['dtype']} {info['shape']} in the engine")
        size = given["data_offsets"][1] - given["data_offsets"][0]
        header[fqn] = {"dtype": info["dtype"], "shape": info["shape"], "data_offsets": [offset, offset + size]}
        plan.append((fqn, given, shard, start))
        offset += size
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(len(blob).to_bytes(8, "little") + blob)
            for _, given, shard, start in plan:
                begin, end = given["data_offsets"]
                with open(shard, "rb") as src_f:
                    src_f.seek(start + begin)
                    left = end - begin
                    while left:
                        chunk = src_f.read(min(CHUNK, left))
                        if not chunk:
                            raise OSError(f"{shard} ends early")
                        f.write(chunk)
                        left -= len(chunk)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return None
