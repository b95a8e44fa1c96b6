"""Worker (subprocess, under mpirun for several ranks): load an engine with ModelRunner, generate.

Every rank loads its own engine and joins the generation (ranks of one engine work together); what
comes back follows TensorRT-LLM 1.2.x (runtime/generation.py, GenerationSession.decode_regular, passed through by
ModelRunner.generate): the output ids, a [batch, beams, seq] tensor, reach the ranks of the first pipeline stage
(`rank // tp_size == 0`); the last stage gets a dict of the logits it gathered ({} when it gathers none); the
stages between get None. Tokens are checked where they arrive, and every stage gets what its place says.
"""

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
    import torch
    from tensorrt_llm.runtime import ModelRunner

    engine_dir = Path(req["engine_dir"])
    config = json.loads((engine_dir / "config.json").read_text())
    pretrained = config["pretrained_config"]
    vocab = int(pretrained.get("vocab_size") or 32000)
    mapping = pretrained.get("mapping", {})
    tp, pp = int(mapping.get("tp_size", 1)), int(mapping.get("pp_size", 1))
    rank = _rank()
    # ModelRunner.generate takes a list of 1-D integer tensors (it calls .size(0) and .type(torch.int32)).
    prompt = torch.tensor([t % vocab for t in PROMPT], dtype=torch.int32)
    runner = ModelRunner.from_dir(engine_dir=str(engine_dir), rank=rank)
    out = runner.generate(batch_input_ids=[prompt], max_new_tokens=req["max_new_tokens"], end_id=-1, pad_id=0)
    stage = rank // tp
    if stage == pp - 1 and stage != 0:  # the last stage: its gathered logits only, the ids went to the first
        if not isinstance(out, dict) or "output_ids" in out:
            raise SystemExit(f"rank {rank} (last pipeline stage) expected a dict of gathered logits, got {out!r}")
        return {"detail": f"rank {rank}: last pipeline stage ({', '.join(sorted(out)) or 'no logits gathered'})"}
    if stage != 0:  # a stage between the first and the last: nothing comes back
        if out is not None:
            raise SystemExit(f"rank {rank} (pipeline stage {stage} of {pp}) expected nothing back, got {out!r}")
        return {"detail": f"rank {rank}: pipeline stage {stage}"}
    if not isinstance(out, torch.Tensor) or out.dim() != 3:
        raise SystemExit(f"rank {rank}: expected output ids of shape [batch, beams, seq], got {out!r}")
    new = [int(t) for t in out[0, 0, len(PROMPT):].tolist()]
    if len(new) < 1 or any(not 0 <= t < vocab for t in new):
        raise SystemExit(f"engine generated no valid tokens: {new}")
    return {"tokens": new, "detail": f"generated {len(new)} tokens on rank {rank}"}


def main() -> None:
    req = json.loads(Path(sys.argv[1]).read_text())
    result = validate(req)
    if _rank() == 0:
        Path(req["result"]).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
