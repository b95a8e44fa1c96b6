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
DECODE_TOKENS = 16


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
    speed = measure(runner, vocab, req.get("gpu"))  # every rank takes part; the first stage's rank 0 reports it
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
    return {"tokens": new, "detail": f"generated {len(new)} tokens on rank {rank}", "perf": speed}


def measure(runner: Any, vocab: int, gpu: str | None) -> dict[str, Any]:
    """ModelRunner.generate timed at the engine's envelope (buildlib.core.perf), on every rank alike: the ranks of
    one engine generate together, so each makes the same calls (a fixed count: a time budget could differ between
    ranks and leave one waiting for the others). Prefill: max_batch_size prompts of max_input_len tokens (at most
    max_seq_len - 1), one new token; decode: max_batch_size one-token prompts, DECODE_TOKENS new tokens each."""
    import torch

    from ..core import perf

    b, seq = int(runner.max_batch_size), int(runner.max_seq_len)
    n = max(1, min(int(runner.max_input_len), seq - 1))  # the prompt and its one new token fit max_seq_len
    steps = max(1, min(DECODE_TOKENS, seq - 1))
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    shapes = {}
    for name, (length, new_tokens) in (("prefill", (n, 1)), ("decode", (1, steps))):
        batch = [torch.tensor([(7 * i + j) % vocab for j in range(length)], dtype=torch.int32) for i in range(b)]
        times = perf.timed(lambda batch=batch, k=new_tokens: runner.generate(batch_input_ids=batch, max_new_tokens=k,
                                                                            end_id=-1, pad_id=0),
                           sync, warmup=2, repeats=perf.REPEATS, budget_s=0)
        shapes[name] = perf.shape_record((b, length if name == "prefill" else new_tokens), times)
    name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else gpu  # the GPU the step holds
    return perf.record({"kind": "cuda", "name": name}, shapes["prefill"], shapes["decode"])


def main() -> None:
    req = json.loads(Path(sys.argv[1]).read_text())
    result = validate(req)
    if _rank() == 0:
        Path(req["result"]).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
