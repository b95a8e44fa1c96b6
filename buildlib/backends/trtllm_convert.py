"""Worker (subprocess): Hugging Face checkpoint -> TensorRT-LLM checkpoint, one call per rank."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

CALIBRATED = {"FP8", "W8A8_SQ_PER_CHANNEL", "W4A16_AWQ", "W4A8_AWQ", "NVFP4"}


def convert(req: dict[str, Any]) -> dict[str, Any]:
    import tensorrt_llm
    from tensorrt_llm import Mapping
    from tensorrt_llm.models import MODEL_MAP, AutoModelForCausalLM
    from tensorrt_llm.models.modeling_utils import QuantConfig
    from tensorrt_llm.quantization import QuantAlgo

    tp, pp = req["tp"], req["pp"]
    q = req.get("quantization") or {}
    quant_config = QuantConfig(
        quant_algo=QuantAlgo[q["algo"]] if q.get("algo") else None,
        kv_cache_quant_algo=QuantAlgo[q["kv_cache"]] if q.get("kv_cache") else None,
    )
    if req.get("model_class"):
        if req["model_class"] not in MODEL_MAP:
            raise SystemExit(f"model_class {req['model_class']!r} is not in tensorrt_llm.models.MODEL_MAP")
        cls = MODEL_MAP[req["model_class"]]
    else:
        cls = AutoModelForCausalLM
    out = Path(req["out_dir"])
    for rank in range(tp * pp):
        mapping = Mapping(world_size=tp * pp, rank=rank, tp_size=tp, pp_size=pp)
        if q.get("algo") in CALIBRATED:
            # ModelOpt calibration writes every rank itself (needs a GPU).
            cls.quantize(req["checkpoint"], str(out), dtype=req["dtype"], mapping=mapping, quant_config=quant_config)
            break
        model = cls.from_hugging_face(req["checkpoint"], req["dtype"], mapping=mapping, quant_config=quant_config)
        model.save_checkpoint(str(out), save_config=(rank == 0))
        print(f"rank {rank}/{tp * pp} saved", flush=True)
    return {"tensorrt_llm": tensorrt_llm.__version__}


def main() -> None:
    req = json.loads(Path(sys.argv[1]).read_text())
    Path(req["result"]).write_text(json.dumps(convert(req)))


if __name__ == "__main__":
    main()
