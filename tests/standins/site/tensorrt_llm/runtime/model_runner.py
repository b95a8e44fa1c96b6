"""Stand-in for tensorrt_llm/runtime/model_runner.py: ModelRunner.from_dir() load checks and deterministic generate().

As strict as the real 1.2.x where a caller can get it wrong: generate() takes a list of 1-D integer torch
tensors and returns a [batch, beams, seq] int32 tensor on the first pipeline stage, a dict of gathered logits
({} when none) on the last, None on the stages between;
from_dir() refuses a multi-rank engine outside an MPI world of its size, and a rank whose GPU does not exist.

Test hook (environment): STANDIN_RUNNER_SIGSEGV=1 makes from_dir() die of SIGSEGV, as a broken engine or
library does on load.

Differences from the real runtime, on purpose:
- Tokens are a hash of (engine, prompt, step), not a model's output.
- from_dir() also refuses an engine dir whose config.json `version` is not this tensorrt_llm's version. The real
  runtime does not read that field; a TensorRT-LLM upgrade shows up there as a plan or plugin that fails to
  deserialize. Refusing here keeps "rebuild after an upgrade" observable in tests.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

from .. import _standin
from ..logger import logger
from ..lora_manager import LoraManager
from ..mapping import Mapping
from ..version import __version__


def _mpi_world_size() -> int:
    """tensorrt_llm._utils.mpi_world_size() under Open MPI (mpirun sets OMPI_COMM_WORLD_SIZE); 1 without MPI."""
    return int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1"))


def _refuse(msg: str) -> RuntimeError:
    logger.trt("error", f"IRuntime::deserializeCudaEngine: Error Code 6: API Usage Error ({msg})")
    return RuntimeError(msg)


def deserialize(plan: Path, device: dict[str, Any]) -> dict[str, Any]:
    """IRuntime.deserializeCudaEngine() of a plan on `device`: TensorRT refuses another TensorRT version's plan and
    one built for another compute capability. Returns the plan's meta."""
    import tensorrt

    meta = _standin.read_plan_meta(plan)
    if meta is None:
        raise _refuse(f"{plan}: the file is not a TensorRT engine plan (magic tag does not match)")
    if meta["tensorrt_version"] != tensorrt.__version__:
        raise _refuse("The engine plan file is not compatible with this version of TensorRT, expecting library "
                      f"version {tensorrt.__version__} got {meta['tensorrt_version']}, please rebuild.")
    if meta["compute_capability"] != device["compute_cap"]:
        raise _refuse("The engine plan file is generated on an incompatible device, expecting compute "
                      f"{device['compute_cap']} got compute {meta['compute_capability']}, please rebuild.")
    return meta


def _transient_slowdown(engine_dir: Path, rank: int) -> float:
    """Not TensorRT-LLM behaviour but the GPU's: STANDIN_TRTLLM_SLOW_ONCE=<dir> runs the first process that loads an
    engine dir's rank at half speed, and every later one at full speed. On an H100 the same engine measured 429,584
    then 693,633 prefill tokens/s in two validation processes, each with a tight p10-p90 (bench/RESULTS.md)."""
    marks = os.environ.get("STANDIN_TRTLLM_SLOW_ONCE")
    if not marks:
        return 1.0
    mark = Path(marks) / hashlib.sha256(f"{Path(engine_dir).resolve()}:{rank}".encode()).hexdigest()[:16]
    try:
        mark.touch(exist_ok=False)
    except FileExistsError:
        return 1.0
    return 0.5


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
        self.kv_cache_type = str(build.get("kv_cache_type") or "PAGED").upper()
        self.slowdown = _transient_slowdown(engine_dir, rank)

    @property
    def max_sequence_length(self) -> int:
        return self.max_seq_len

    @classmethod
    def from_dir(cls, engine_dir: str, *, max_output_len: int | None = None, lora_dir: list[str] | None = None,
                 rank: int = 0, debug_mode: bool = False, lora_ckpt_source: str = "hf",
                 medusa_choices: list[list[int]] | None = None, stream: Any = None, gpu_weights_percent: float = 1,
                 enable_context_fmha_fp32_acc: bool | None = None, multi_block_mode: bool | None = None,
                 fail_fast_on_attention_window_too_large: bool = False) -> ModelRunner:
        import tensorrt  # noqa: F401 - the real runtime needs TensorRT before it reads anything

        if os.environ.get("STANDIN_RUNNER_SIGSEGV"):
            os.kill(os.getpid(), signal.SIGSEGV)
        root = Path(engine_dir)
        config = json.loads((root / "config.json").read_text())
        built_with = config.get("version")
        if built_with != __version__:
            raise _refuse(f"The engine in {root} was built by TensorRT-LLM {built_with}, this is TensorRT-LLM "
                          f"{__version__}; the engine plan file is not compatible with this version, please rebuild.")
        mapping = config["pretrained_config"]["mapping"]
        world_size = int(mapping["tp_size"]) * int(mapping["pp_size"])
        # The real assert "Engine world size != Runtime world size" lives in model_runner.py
        # _builder_to_model_config(), the legacy-engine path; on this (new-format) path a rank short of the engine's
        # world size waits in NCCL for the ranks that never come. The stand-in refuses it at once instead of hanging.
        assert world_size == _mpi_world_size(), \
            f"Engine world size ({world_size}) != Runtime world size ({_mpi_world_size()})"
        kv_cache_type = str(config["build_config"].get("kv_cache_type") or "PAGED").upper()
        # ModelRunner.from_engine(): an engine without KV cache is for the context phase only.
        if kv_cache_type == "DISABLED":
            assert max_output_len == 1 or max_output_len is None, \
                "Disabled KV cache is intended for context phase only now."
        gpus = _standin.visible_gpus()
        if not gpus:
            raise RuntimeError("CUDA error: no CUDA-capable device is detected")
        # ModelRunner.from_engine(): torch.cuda.set_device(rank % runtime_mapping.gpus_per_node); a GPU per rank.
        ordinal = rank % int(mapping.get("gpus_per_node", 8))
        if ordinal >= len(gpus):
            raise RuntimeError("CUDA error: invalid device ordinal")
        device = gpus[ordinal]
        plan = root / f"rank{rank}.engine"
        with open(plan, "rb"):  # FileNotFoundError for a missing rank, as the real one
            pass
        meta = deserialize(plan, device)
        if meta["rank"] != rank:
            raise _refuse(f"{plan} holds rank {meta['rank']}, not rank {rank}")
        if meta.get("weights_stripped"):
            # A plan built with BuilderFlag.STRIP_PLAN holds no refittable weights: TensorRT runs it only after
            # they are supplied through IRefitter (trtllm-refit); the runtime cannot execute it as it is.
            raise _refuse(f"{plan} is weight-stripped (built with --strip_plan): refit it with trtllm-refit "
                          "before running it")
        # ModelRunner.from_dir(): with no lora_dir given, the adapters the engine's config names (Engine.save made
        # them lora/<i>, relative to the engine dir) are loaded; from_engine() loads them through LoraManager when
        # the engine has the LoRA plugin, so an adapter missing from the engine dir fails the load.
        lora = config["build_config"].get("lora_config") or {}
        if lora_dir is None and lora.get("lora_dir"):
            lora_dir = [f"{engine_dir}/{d}" for d in lora["lora_dir"]]
            lora_ckpt_source = lora.get("lora_ckpt_source", "hf")
        plugins = config["build_config"].get("plugin_config") or {}
        if plugins.get("lora_plugin") is not None and lora_dir is not None:
            LoraManager().load_from_ckpt(lora_dir, ckpt_source=lora_ckpt_source)
        return cls(root, config, rank, meta, device)

    def generate(self, batch_input_ids: list[Any], *, sampling_config: Any = None, max_new_tokens: int = 20,
                 end_id: int | None = None, pad_id: int | None = None, num_beams: int = 1,
                 **kwargs: Any) -> Any:
        """Deterministic tokens; rows are prompt + new tokens, padded with end_id to one length. What each pipeline
        stage gets back is what GenerationSession.decode_regular() returns there (see the end)."""
        import torch

        if sampling_config is not None:
            end_id = getattr(sampling_config, "end_id", end_id)
            pad_id = getattr(sampling_config, "pad_id", pad_id)
            max_new_tokens = getattr(sampling_config, "max_new_tokens", max_new_tokens)
            num_beams = getattr(sampling_config, "num_beams", num_beams)
        if end_id is None or pad_id is None:
            raise TypeError("SamplingConfig.__init__() missing required arguments: 'end_id' and 'pad_id'")
        batch_size = len(batch_input_ids)
        # ModelRunnerMixin._check_inputs(): x.size(0) on each prompt (AttributeError for a list of ints).
        input_lengths = [x.size(0) for x in batch_input_ids]
        if batch_size > self.max_batch_size:
            raise RuntimeError(f"Input batch size ({batch_size}) exceeds the engine or specified limit "
                               f"({self.max_batch_size})")
        longest = max(input_lengths)
        if longest > self.max_input_len:
            raise RuntimeError(f"Maximum input length ({longest}) exceeds the engine or specified limit "
                               f"({self.max_input_len})")
        if longest + max_new_tokens > self.max_seq_len:
            raise RuntimeError(f"Maximum input length ({longest}) + maximum new tokens ({max_new_tokens}) exceeds "
                               f"the engine or specified limit ({self.max_seq_len})")
        if num_beams > self.max_beam_width:
            raise RuntimeError(f"Num beams ({num_beams}) exceeds the engine or specified limit "
                               f"({self.max_beam_width})")
        # ModelRunnerMixin._prepare_inputs(): x.type(torch.int32) (a float tensor would lose token ids here).
        prompts = [x.type(torch.int32).tolist() for x in batch_input_ids]
        # ModelRunner.generate(): no KV cache, no generation phase.
        if self.kv_cache_type == "DISABLED" and max_new_tokens > 1:
            raise RuntimeError("Disabled KV cache is intended for context phase only now.")
        width = longest + max_new_tokens
        rows = []
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
            rows.append(beams)
        # Not TensorRT-LLM behaviour but its cost: a real engine spends GPU time per token, so a timed generate() has
        # something stable to measure. Prefill at STANDIN_TRTLLM_TOKENS_PER_S (default 1e6), generated tokens at a
        # tenth of it, all divided by STANDIN_TRTLLM_SPEED (default 1; 0.8 = a rebuild 20% slower).
        rate = float(os.environ.get("STANDIN_TRTLLM_TOKENS_PER_S", "1e6")) * float(
            os.environ.get("STANDIN_TRTLLM_SPEED", "1")) * self.slowdown
        time.sleep(sum(input_lengths) / rate + batch_size * num_beams * max_new_tokens * 10 / rate)
        # GenerationSession.decode_regular() (ModelRunner.generate() passes it through): the output ids reach the
        # first pipeline stage (pp_communicate_final_output_ids); the last stage gets a dict holding the logits it
        # gathered, if the engine gathers any ({} otherwise); the stages between get None.
        if self.mapping.is_first_pp_rank():
            return torch.tensor(rows, dtype=torch.int32)
        if self.mapping.is_last_pp_rank():
            outputs: dict[str, Any] = {}
            if self.gather_context_logits:
                outputs["context_logits"] = torch.zeros((sum(input_lengths), self.vocab_size))
            if self.gather_generation_logits:
                outputs["generation_logits"] = [torch.zeros((batch_size * num_beams, self.vocab_size))
                                                for _ in range(max_new_tokens)]
            return outputs
        return None

    def __repr__(self) -> str:
        return f"ModelRunner(engine_dir={os.fspath(self.engine_dir)!r}, rank={self.runtime_rank})"
