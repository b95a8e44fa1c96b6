"""Worker (subprocess, under mpirun for several ranks): load an engine with ModelRunner, generate."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

PROMPT = [1, 15043, 29892, 920, 526, 366]  # fixed token ids: no tokenizer needed to smoke-test


def _rank() -> int:
    for var in ("OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK"):
        if var in os.environ:
            return int(os.environ[var])
    return 0


def validate(req: dict[str, Any]) -> dict[str, Any]:
    from tensorrt_llm.runtime import ModelRunner

    engine_dir = Path(req["engine_dir"])
    config = json.loads((engine_dir / "config.json").read_text())
    vocab = int(config["pretrained_config"].get("vocab_size") or 32000)
    prompt = [t % vocab for t in PROMPT]
    runner = ModelRunner.from_dir(engine_dir=str(engine_dir), rank=_rank())
    out = runner.generate(batch_input_ids=[prompt], max_new_tokens=req["max_new_tokens"], end_id=-1, pad_id=0)
    ids = out.tolist() if hasattr(out, "tolist") else out
    flat = ids
    while isinstance(flat, list) and flat and isinstance(flat[0], list):
        flat = flat[0]
    new = [int(t) for t in flat[len(prompt):]]
    if len(new) < 1 or any(not 0 <= t < vocab for t in new):
        raise SystemExit(f"engine generated no valid tokens: {new}")
    return {"tokens": new, "detail": f"generated {len(new)} tokens on rank {_rank()}"}


def main() -> None:
    req = json.loads(Path(sys.argv[1]).read_text())
    result = validate(req)
    if _rank() == 0:
        Path(req["result"]).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
