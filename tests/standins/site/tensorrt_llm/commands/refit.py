"""Stand-in for tensorrt_llm/commands/refit.py (trtllm-refit 1.2.1): the same options and checks, fake refits.

What it mirrors, in the order the real main() and refit_engine() do it:
- `--engine_dir`, `--checkpoint_dir`, `--output_dir` (all default None), `--log_level` (default 'info', any string
  logger.set_level accepts); a missing or nonexistent engine or checkpoint dir is a RuntimeError naming it.
- EngineConfig.from_json_file(<engine_dir>/config.json); the checkpoint's config.json `architecture` must equal
  the engine's pretrained_config.architecture, else RuntimeError "Engine Architecture and Checkpoint Architecture
  do not match".
- refit(): os.path.normpath(output_dir) (a TypeError when it is not given), makedirs, config.json copied, then
  every `*.engine` of engine_dir, whose rank comes from ENGINE_RE.fullmatch(basename) (`rankN.engine`).
- refit_engine(): the plan is deserialized (TensorRT refuses another TensorRT version or compute capability);
  trt.Refitter needs an engine built refittable (--strip_plan: REFIT_INDIVIDUAL); the rank's checkpoint is read
  with MODEL_MAP[arch].from_checkpoint(checkpoint_dir, config=rank_config) (asserts rank<N>.safetensors exists);
  each checkpoint weight that is refittable is set (set_named_weights fails on another dtype or shape:
  "Failed to refit weight"); refittable weights the checkpoint lacks: RuntimeError "Missing refittable weights";
  the refitted engine is written with its weights (EXCLUDE_WEIGHTS cleared) to <output_dir>/rank<N>.engine.

Test hook (environment): STANDIN_TRTLLM_REFIT_LOG=<file> gets one JSON line per invocation (argv, pid,
CUDA_VISIBLE_DEVICES).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from .. import _standin
from ..builder import EngineConfig
from ..logger import logger
from ..models import MODEL_MAP, PretrainedConfig
from ..runtime.model_runner import deserialize

ENGINE_RE = re.compile(r"rank(\d+).engine")


def _record_invocation() -> None:
    path = os.environ.get("STANDIN_TRTLLM_REFIT_LOG")
    if path:
        rec = {"argv": sys.argv[1:], "pid": os.getpid(), "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES")}
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (json.dumps(rec) + "\n").encode())  # one O_APPEND write: safe across processes
        finally:
            os.close(fd)


def _deserialize(engine_path: Path) -> dict[str, Any]:
    """runtime.deserialize_cuda_engine() on the current device (GPU 0 of those visible)."""
    gpus = _standin.visible_gpus()
    if not gpus:
        raise RuntimeError("CUDA error: no CUDA-capable device is detected")
    return deserialize(engine_path, gpus[0])


def refit_engine(engine_path: str, refit_engine_dir: str, checkpoint_dir: str, engine_config: EngineConfig) -> None:
    rank = int(ENGINE_RE.fullmatch(os.path.basename(engine_path)).group(1))  # AttributeError for another name
    tik = time.time()
    meta = _deserialize(Path(engine_path))
    logger.info(f"Load TRT engine time: {time.strftime('%H:%M:%S', time.gmtime(time.time() - tik))}")
    # trt.Refitter(engine, logger): TensorRT creates a refitter only for an engine built with a REFIT flag.
    if not meta.get("refittable_weights"):
        logger.trt("error", "IRefitter::createInferRefitter: Error Code 3: API Usage Error (the engine was not built "
                            "as refittable)")
        raise TypeError("pybind11::init(): factory function returned nullptr")
    refittable = meta["refittable_weights"]

    rank_config = PretrainedConfig.from_dict(engine_config.pretrained_config.to_dict())
    rank_config.set_rank(rank)
    architecture = rank_config.architecture
    assert architecture in MODEL_MAP, f"Unsupported model architecture: {architecture}"
    MODEL_MAP[architecture].from_checkpoint(checkpoint_dir, config=rank_config)
    weights_path = Path(checkpoint_dir) / f"rank{rank}.safetensors"
    given = _standin.tensor_shapes(weights_path)

    refitted = []
    for name, shape in given.items():
        if name in refittable:
            assert shape == refittable[name], f"Failed to refit weight: `{name}`"  # set_named_weights -> False
            refitted.append(name)
        else:
            logger.warning(f"model weights `{name}` (shape: {shape[1]}) is not refittable, this means that we might "
                           "not be able to update the engine using fine-tuned checkpoint!")
    if len(refitted) != len(refittable):
        raise RuntimeError(f"Missing refittable weights {set(refittable).difference(refitted)} from {checkpoint_dir}")

    world_size = rank_config.mapping.world_size
    new = {**meta, "weights_digest": _standin.sha256_files([weights_path]), "weights_stripped": False,
           "model_digest": _standin.model_digest(meta["structure_digest"], checkpoint_dir, world_size)}
    out = os.path.join(refit_engine_dir, os.path.basename(engine_path))
    logger.info(f"\nWriting refitted engine to `{out}`")
    _standin.write_plan(Path(out), new, _standin.canonical([new, new["options_digest"]]).decode())


def refit(engine_dir: str, checkpoint_dir: str, engine_config: EngineConfig, output_dir: str) -> None:
    os.makedirs(output_dir, exist_ok=True)
    shutil.copyfile(os.path.join(engine_dir, "config.json"), os.path.join(output_dir, "config.json"))
    for path in Path(engine_dir).glob("*.engine"):
        refit_engine(str(path), output_dir, checkpoint_dir, engine_config)


def main() -> None:
    _record_invocation()
    parser = argparse.ArgumentParser()
    parser.add_argument("--engine_dir", type=str, default=None)
    parser.add_argument("--checkpoint_dir", type=str, default=None)
    parser.add_argument("--output_dir", type=str, default=None)
    parser.add_argument("--log_level", type=str, default="info")
    args = parser.parse_args()

    logger.set_level(args.log_level)
    if args.engine_dir is None or not Path(args.engine_dir).exists():
        raise RuntimeError(f"Please supply a valid --engine_dir (found `{args.engine_dir}`)")
    if args.checkpoint_dir is None or not Path(args.checkpoint_dir).exists():
        raise RuntimeError(f"Please supply a valid --checkpoint_dir (found `{args.checkpoint_dir}`)")

    engine_config = EngineConfig.from_json_file(os.path.join(args.engine_dir, "config.json"))
    with open(os.path.join(args.checkpoint_dir, "config.json")) as f:
        checkpoint_config = json.load(f)
    engine_arch = engine_config.pretrained_config.architecture
    checkpoint_arch = checkpoint_config["architecture"]
    if engine_arch != checkpoint_arch:
        raise RuntimeError("Engine Architecture and Checkpoint Architecture do not match. "
                           f"Engine Architecture: `{engine_arch}`, Checkpoint Architecture: `{checkpoint_arch}`")

    refit(os.path.normpath(args.engine_dir), os.path.normpath(args.checkpoint_dir), engine_config,
          os.path.normpath(args.output_dir))


if __name__ == "__main__":
    main()
