"""Stand-in for tensorrt_llm/runtime/model_runner.py: ModelRunner.from_dir() load checks and deterministic generate().

Differences from the real runtime, on purpose:
- generate() returns OutputIds, a list subclass (batch x beams x tokens) with .tolist() and .shape, where the
  real one returns a torch.Tensor of that shape; batch_input_ids may be lists of ints instead of tensors.
- Tokens are a hash of (engine, prompt, step), not a model's output.
- from_dir() also refuses an engine dir whose config.json `version` is not this tensorrt_llm's version. The real
  runtime does not read that field; a TensorRT-LLM upgrade shows up there as a plan or plugin that fails to
  deserialize. Refusing here keeps "rebuild after an upgrade" observable in tests.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from .. import _standin
from ..logger import logger
from ..mapping import Mapping
from ..version import __version__


class OutputIds(list):
    """output_ids as nested lists [batch][beam][token]; .tolist() and .shape mimic the torch.Tensor API."""

    def tolist(self) -> list[list[list[int]]]:
        return [[list(beam) for beam in seq] for seq in self]

    @property
    def shape(self) -> tuple[int, int, int]:
        return (len(self), len(self[0]) if self else 0, len(self[0][0]) if self and self[0] else 0)


def _refuse(msg: str) -> RuntimeError:
    logger.trt("error", f"IRuntime::deserializeCudaEngine: Error Code 6: API Usage Error ({msg})")
    return RuntimeError(msg)


class ModelRunner:
    def __init__(self, engine_dir: Path, config: dict[str, Any], rank: int, meta: dict[str, Any],
                 device: dict[str, Any]) -> None:
        self.engine_dir = engine_dir
        self.config = config
        self.runtime_rank = rank
        self.meta = meta
        self.device = device
        pretrained = config["pretrained_config"]
        build = config["build_config"]
        mapping = dict(pretrained.get("mapping", {}))
        mapping.pop("rank", None)
        self.mapping = Mapping(**{**mapping, "rank": rank})
        self.vocab_size = int(pretrained.get("vocab_size") or 32000)
        self.num_layers = int(pretrained.get("num_hidden_layers", 0))
        self.hidden_size = int(pretrained.get("hidden_size", 0))
        self.num_heads = int(pretrained.get("num_attention_heads", 0))
        self.dtype = pretrained.get("dtype")
        self.max_batch_size = int(build["max_batch_size"])
        self.max_input_len = int(build["max_input_len"])
        self.max_seq_len = int(build["max_seq_len"])
        self.max_beam_width = int(build["max_beam_width"])
        self.gather_context_logits = bool(build.get("gather_context_logits"))
        self.gather_generation_logits = bool(build.get("gather_generation_logits"))

    @property
    def max_sequence_length(self) -> int:
        return self.max_seq_len

    @classmethod
    def from_dir(cls, engine_dir: str, *, max_output_len: int | None = None, lora_dir: list[str] | None = None,
                 rank: int = 0, debug_mode: bool = False, lora_ckpt_source: str = "hf",
                 medusa_choices: list[list[int]] | None = None, stream: Any = None, gpu_weights_percent: float = 1,
                 enable_context_fmha_fp32_acc: bool | None = None, multi_block_mode: bool | None = None,
                 ) -> ModelRunner:
        import tensorrt

        root = Path(engine_dir)
        config = json.loads((root / "config.json").read_text())
        built_with = config.get("version")
        if built_with != __version__:
            raise _refuse(f"The engine in {root} was built by TensorRT-LLM {built_with}, this is TensorRT-LLM "
                          f"{__version__}; the engine plan file is not compatible with this version, please rebuild.")
        gpus = _standin.visible_gpus()
        if not gpus:
            raise RuntimeError("CUDA error: no CUDA-capable device is detected")
        device = gpus[rank % len(gpus)]  # torch.cuda.set_device(rank % device_count)
        plan = root / f"rank{rank}.engine"
        with open(plan, "rb"):  # FileNotFoundError for a missing rank, as the real one
            pass
        meta = _standin.read_plan_meta(plan)
        if meta is None:
            raise _refuse(f"{plan}: the file is not a TensorRT engine plan (magic tag does not match)")
        if meta["tensorrt_version"] != tensorrt.__version__:
            raise _refuse("The engine plan file is not compatible with this version of TensorRT, expecting library "
                          f"version {tensorrt.__version__} got {meta['tensorrt_version']}, please rebuild.")
        if meta["compute_capability"] != device["compute_cap"]:
            raise _refuse("The engine plan file is generated on an incompatible device, expecting compute "
                          f"{device['compute_cap']} got compute {meta['compute_capability']}, please rebuild.")
        if meta["rank"] != rank:
            raise _refuse(f"{plan} holds rank {meta['rank']}, not rank {rank}")
        return cls(root, config, rank, meta, device)

    def generate(self, batch_input_ids: list[Any], *, sampling_config: Any = None, max_new_tokens: int = 20,
                 end_id: int | None = None, pad_id: int | None = None, num_beams: int = 1,
                 **kwargs: Any) -> OutputIds:
        """Deterministic tokens; output rows are prompt + new tokens, padded with end_id to one length."""
        if sampling_config is not None:
            end_id = getattr(sampling_config, "end_id", end_id)
            pad_id = getattr(sampling_config, "pad_id", pad_id)
            max_new_tokens = getattr(sampling_config, "max_new_tokens", max_new_tokens)
            num_beams = getattr(sampling_config, "num_beams", num_beams)
        if end_id is None or pad_id is None:
            raise TypeError("SamplingConfig.__init__() missing required arguments: 'end_id' and 'pad_id'")
        prompts = [[int(t) for t in (p.tolist() if hasattr(p, "tolist") else p)] for p in batch_input_ids]
        if len(prompts) > self.max_batch_size:
            raise RuntimeError(f"batch size {len(prompts)} exceeds the engine's max_batch_size {self.max_batch_size}")
        if num_beams > self.max_beam_width:
            raise RuntimeError(f"num_beams {num_beams} exceeds the engine's max_beam_width {self.max_beam_width}")
        longest = max((len(p) for p in prompts), default=0)
        if longest > self.max_input_len:
            raise RuntimeError(f"input length {longest} exceeds the engine's max_input_len {self.max_input_len}")
        if longest + max_new_tokens > self.max_seq_len:
            raise RuntimeError(f"input length {longest} + max_new_tokens {max_new_tokens} exceeds the engine's "
                               f"max_seq_len {self.max_seq_len}")
        width = longest + max_new_tokens
        out = OutputIds()
        for prompt in prompts:
            beams = []
            for beam in range(num_beams):
                seq = list(prompt)
                for step in range(max_new_tokens):
                    h = hashlib.sha256(f"{self.meta['model_digest']}:{prompt}:{beam}:{step}".encode()).digest()
                    token = int.from_bytes(h[:8], "little") % self.vocab_size
                    seq.append(token)
                    if token == end_id:
                        break
                beams.append(seq + [end_id] * (width - len(seq)))
            out.append(beams)
        return out

    def __repr__(self) -> str:
        return f"ModelRunner(engine_dir={os.fspath(self.engine_dir)!r}, rank={self.runtime_rank})"
