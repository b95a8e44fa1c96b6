"""Worker (subprocess): Hugging Face checkpoint -> TensorRT-LLM checkpoint, one call per rank."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from .trtllm_recipe import needs_calibration


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
    calibrate = needs_calibration(q)
    name = req.get("model_class")
    if name is None and calibrate:  # quantize() is a classmethod of the concrete model class
        name = json.loads(Path(req["checkpoint"], "config.json").read_text())["architectures"][0]
    if name is not None and name not in MODEL_MAP:
        raise SystemExit(f"model class {name!r} is not in tensorrt_llm.models.MODEL_MAP")
    cls = MODEL_MAP[name] if name is not None else AutoModelForCausalLM
    out = Path(req["out_dir"])
    for rank in range(tp * pp):
        mapping = Mapping(world_size=tp * pp, rank=rank, tp_size=tp, pp_size=pp)
        if calibrate:
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
