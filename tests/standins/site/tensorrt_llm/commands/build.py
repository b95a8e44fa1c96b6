"""Stand-in for tensorrt_llm/commands/build.py (trtllm-build 1.2.1): the same argparse parser, fake engine builds.

Test hooks (environment):
  STANDIN_TRTLLM_LOG=<file>            append one JSON line per invocation (argv, cwd, CUDA_VISIBLE_DEVICES, pid,
                                       and $STANDIN_RUN_TAG as `run`: which of several concurrent runs it was)
  STANDIN_TRTLLM_CRASH_AFTER_RANK=<r>  SIGKILL this process right after rank r's engine is written
  STANDIN_TRTLLM_SLEEP=<seconds>       sleep this long per rank (scheduling benchmarks only)
  STANDIN_TRTLLM_STARTED_FIFO=<fifo>   after rank 0's engine is written, write a line to this FIFO and then
                                       wait forever (until killed): lets a test kill a build mid-way, in sync
  STANDIN_TRTLLM_GATE=<fifo>           after rank 0's engine is written, read this FIFO to its end: the build
                                       holds (its lock, its GPUs) until the test closes the writing end
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import sys
import time
import traceback
from concurrent.futures import ThreadPoolExecutor, as_completed
from importlib.machinery import SourceFileLoader
from pathlib import Path
from typing import Any

from .. import _standin
from ..builder import BUILD_CONFIG_DEFAULTS, BuildConfig, Engine, build
from ..llmapi.kv_cache_type import KVCacheType
from ..logger import logger, severity_map
from ..lora_manager import LoraManager
from ..models import MODEL_MAP, PretrainedConfig
from ..plugin import PluginConfig, add_plugin_argument
from ..quantization.mode import QuantAlgo


def parse_arguments() -> argparse.ArgumentParser:
    """Option names, aliases, defaults and choices of trtllm-build 1.2.x (help texts omitted)."""
    d = BUILD_CONFIG_DEFAULTS
    parser = argparse.ArgumentParser(formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--checkpoint_dir", type=str, default=None)
    parser.add_argument("--model_config", type=str, default=None)
    parser.add_argument("--build_config", type=str, default=None)
    parser.add_argument("--model_cls_file", type=str, default=None)
    parser.add_argument("--model_cls_name", type=str, default=None)
    parser.add_argument("--output_dir", type=str, default="engine_outputs")
    parser.add_argument("--max_batch_size", type=int, default=d["max_batch_size"])
    parser.add_argument("--max_input_len", type=int, default=d["max_input_len"])
    parser.add_argument("--max_seq_len", "--max_decoder_seq_len", dest="max_seq_len", type=int,
                        default=d["max_seq_len"])
    parser.add_argument("--max_beam_width", type=int, default=d["max_beam_width"])
    parser.add_argument("--max_num_tokens", type=int, default=d["max_num_tokens"])
    parser.add_argument("--opt_num_tokens", type=int, default=d["opt_num_tokens"])
    parser.add_argument("--max_encoder_input_len", type=int, default=d["max_encoder_input_len"])
    parser.add_argument("--max_prompt_embedding_table_size", "--max_multimodal_len", type=int,
                        default=d["max_prompt_embedding_table_size"])
    parser.add_argument("--kv_cache_type", default=argparse.SUPPRESS, type=KVCacheType)
    parser.add_argument("--paged_kv_cache", type=str, default=argparse.SUPPRESS)
    parser.add_argument("--input_timing_cache", type=str, default=d["input_timing_cache"])
    parser.add_argument("--output_timing_cache", type=str, default=d["output_timing_cache"])
    parser.add_argument("--profiling_verbosity", type=str, default=d["profiling_verbosity"],
                        choices=["layer_names_only", "detailed", "none"])
    parser.add_argument("--strip_plan", default=d["use_strip_plan"], action="store_true")
    parser.add_argument("--weight_sparsity", default=d["weight_sparsity"], action="store_true")
    parser.add_argument("--weight_streaming", default=d["weight_streaming"], action="store_true")
    parser.add_argument("--fast_build", default=False, action="store_true")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--log_level", type=str, default="info", choices=severity_map.keys())
    parser.add_argument("--enable_debug_output", default=d["enable_debug_output"], action="store_true")
    parser.add_argument("--visualize_network", type=str, default=None)
    parser.add_argument("--dry_run", default=d["dry_run"], action="store_true")
    parser.add_argument("--monitor_memory", default=False, action="store_true")

    logits = parser.add_argument_group("Logits arguments")
    logits.add_argument("--logits_dtype", type=str, default=None, choices=["float16", "float32"])
    logits.add_argument("--gather_context_logits", action="store_true", default=False)
    logits.add_argument("--gather_generation_logits", action="store_true", default=False)
    logits.add_argument("--gather_all_token_logits", action="store_true", default=False)

    lora = parser.add_argument_group("LoRA arguments")
    lora.add_argument("--lora_dir", type=str, default=None, nargs="+")
    lora.add_argument("--lora_ckpt_source", type=str, default="hf", choices=["hf", "nemo"])
    lora.add_argument("--lora_target_modules", nargs="+", default=None, choices=LoraManager.LORA_MODULE_IDS.keys())
    lora.add_argument("--max_lora_rank", type=int, default=64)

    spec = parser.add_argument_group("Speculative decoding arguments")
    spec.add_argument("--speculative_decoding_mode", default=None,
                      choices=["draft_tokens_external", "lookahead_decoding", "medusa", "explicit_draft_tokens",
                               "eagle"])
    spec.add_argument("--max_draft_len", type=int, default=0)

    add_plugin_argument(parser.add_argument_group("Plugin config arguments"))
    return parser


def _record_invocation() -> None:
    path = os.environ.get("STANDIN_TRTLLM_LOG")
    if not path:
        return
    rec = {"argv": sys.argv[1:], "cwd": os.getcwd(), "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES"),
           "pid": os.getpid(), "time": time.time(), "run": os.environ.get("STANDIN_RUN_TAG"),
           "gpus": [{"name": g["name"], "compute_cap": g["compute_cap"]} for g in _standin.visible_gpus()]}
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(rec) + "\n").encode())  # one write with O_APPEND: safe across processes
    finally:
        os.close(fd)


def build_and_save(rank: int, gpu_id: int, ckpt_dir: str | None, build_config: BuildConfig, output_dir: str,
                   log_level: str, model_config: PretrainedConfig, digests: dict[str, str]) -> bool:
    gpus = _standin.visible_gpus()
    gpu = gpus[gpu_id]  # torch.cuda.set_device(gpu_id)
    logger.set_level(log_level)
    sleep = float(os.environ.get("STANDIN_TRTLLM_SLEEP") or 0)
    if sleep > 0:
        time.sleep(sleep)
    engine: Engine = build(rank, gpu, ckpt_dir, model_config, build_config, digests)
    engine.save(output_dir)
    fifo = os.environ.get("STANDIN_TRTLLM_STARTED_FIFO")
    if fifo and rank == 0:
        with open(fifo, "w") as f:
            f.write("rank0 written\n")
        signal.pause()
    gate = os.environ.get("STANDIN_TRTLLM_GATE")
    if gate and rank == 0:
        with open(gate) as f:
            f.read()
    crash = os.environ.get("STANDIN_TRTLLM_CRASH_AFTER_RANK")
    if crash is not None and crash.strip() != "" and int(crash) == rank:
        os.kill(os.getpid(), signal.SIGKILL)
    return True


def parallel_build(model_config: PretrainedConfig, ckpt_dir: str | None, build_config: BuildConfig,
                   output_dir: str, workers: int, log_level: str, digests: dict[str, str]) -> None:
    world_size = model_config.mapping.world_size
    if workers == 1:
        for rank in range(world_size):
            passed = build_and_save(rank, rank % workers, ckpt_dir, build_config, output_dir, log_level,
                                    model_config, digests)
            assert passed, "Engine building failed, please check error log."
        return
    # The real one uses ProcessPoolExecutor(spawn); both raise "max_workers must be greater than 0" for 0 GPUs.
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(build_and_save, rank, rank % workers, ckpt_dir, build_config, output_dir, log_level,
                               model_config, digests) for rank in range(world_size)]
        exceptions = []
        for future in as_completed(futures):
            try:
                future.result()
            except Exception as e:
                traceback.print_exc()
                exceptions.append(e)
        assert len(exceptions) == 0, "Engine building failed, please check error log."


def _model_digests(ckpt_dir: str | None, config_path: str, build_config: BuildConfig,
                   world_size: int) -> dict[str, str]:
    """What every rank's engine shares (the stand-in runtime generates from model_digest, so all ranks agree);
    structure_digest is the part a refit keeps."""
    h = hashlib.sha256(Path(config_path).read_bytes())
    # Refit flags change what the plan holds (refittable, stripped), not what it computes.
    engine_options = {k: v for k, v in build_config.to_dict().items()
                      if "timing_cache" not in k and k not in ("use_refit", "use_strip_plan")}
    h.update(_standin.canonical(engine_options))
    return {"structure_digest": h.hexdigest(), "model_digest": _standin.model_digest(h.hexdigest(), ckpt_dir,
                                                                                      world_size)}


def main() -> None:
    _record_invocation()
    parser = parse_arguments()
    args = parser.parse_args()

    # (sic) hasattr() is always true here in the real tool too, so this warning is always printed.
    if hasattr(args, "gather_generation_logits"):
        logger.warning("Option --gather_generation_logits is deprecated, a build flag is not required anymore. "
                       "Use --output_generation_logits at runtime instead.")
    if args.gather_all_token_logits:
        args.gather_context_logits = True
        args.gather_generation_logits = True
    if args.gather_context_logits and args.max_draft_len > 0:
        raise RuntimeError("Gather context logits is not support with draft len > 0. If want to get the accepted "
                           "tokens' logits from target model, please just enable gather_generation_logits")

    logger.set_level(args.log_level)
    tik = time.time()
    if not os.path.exists(args.output_dir):
        os.makedirs(args.output_dir, exist_ok=True)

    if args.model_cls_file is not None:
        assert args.model_cls_name is not None
        mod = SourceFileLoader("models", args.model_cls_file).load_module()
        getattr(mod, args.model_cls_name)

    workers = min(_standin.device_count(), args.workers)

    if hasattr(args, "paged_kv_cache"):
        logger.warning("Option --paged_kv_cache is deprecated, use --kv_cache_type=paged/disabled instead.")

    plugin_config = PluginConfig.from_arguments(args)
    plugin_config.validate()  # main(): NotImplementedError for plugins the build GPU does not support
    if args.fast_build:
        plugin_config.set("manage_weights", True)

    ckpt_dir_or_model_config = args.checkpoint_dir if args.checkpoint_dir is not None else args.model_config
    if ckpt_dir_or_model_config.lower().endswith(".json"):
        config_path, ckpt_dir = ckpt_dir_or_model_config, None
    else:
        config_path, ckpt_dir = os.path.join(ckpt_dir_or_model_config, "config.json"), ckpt_dir_or_model_config
    model_config = PretrainedConfig.from_json_file(config_path)
    assert model_config.architecture in MODEL_MAP, f"Unsupported model architecture: {model_config.architecture}"
    if args.logits_dtype is not None:
        model_config.logits_dtype = args.logits_dtype
    quant_algo = model_config.quantization.quant_algo
    if quant_algo and quant_algo not in (QuantAlgo.FP8, QuantAlgo.MIXED_PRECISION):
        plugin_config.values["use_fused_mlp"] = False

    if args.build_config is None:
        if args.multiple_profiles == "enable" and args.opt_num_tokens is not None:
            raise RuntimeError("multiple_profiles is enabled, while opt_num_tokens is set. "
                               "They are not supposed to be working in the same time for now.")
        values: dict[str, Any] = {
            "max_input_len": args.max_input_len, "max_seq_len": args.max_seq_len,
            "max_batch_size": args.max_batch_size, "max_beam_width": args.max_beam_width,
            "max_num_tokens": args.max_num_tokens, "opt_num_tokens": args.opt_num_tokens,
            "max_prompt_embedding_table_size": args.max_prompt_embedding_table_size,
            "kv_cache_type": getattr(args, "kv_cache_type", None),
            "gather_context_logits": args.gather_context_logits,
            "gather_generation_logits": args.gather_generation_logits, "strongly_typed": True,
            "weight_sparsity": args.weight_sparsity, "profiling_verbosity": args.profiling_verbosity,
            "enable_debug_output": args.enable_debug_output, "max_draft_len": args.max_draft_len,
            "speculative_decoding_mode": (args.speculative_decoding_mode or "none").upper(),
            "input_timing_cache": args.input_timing_cache, "output_timing_cache": args.output_timing_cache,
            "dry_run": args.dry_run, "visualize_network": args.visualize_network,
            "max_encoder_input_len": args.max_encoder_input_len, "weight_streaming": args.weight_streaming,
            "monitor_memory": args.monitor_memory, "use_strip_plan": args.strip_plan,
            "use_mrope": getattr(model_config, "qwen_type", None) == "qwen2_vl",
        }
        build_config = BuildConfig(plugin_config=plugin_config, **values)
        if plugin_config.get("lora_plugin") is not None:
            build_config["lora_config"] = {"lora_dir": args.lora_dir or [], "lora_ckpt_source": args.lora_ckpt_source,
                                           "max_lora_rank": args.max_lora_rank,
                                           "lora_target_modules": args.lora_target_modules or [],
                                           "trtllm_modules_to_hf_modules": {}}
    else:
        build_config = BuildConfig.from_json_file(args.build_config)
        build_config.plugin_config = plugin_config
    assert not plugin_config.get("streamingllm"), (
        "StreamingLLM is no longer supported because attention sink cannot work with the non-cyclic kv cache "
        "kernel & runtime changes.")

    digests = _model_digests(ckpt_dir, config_path, build_config, model_config.mapping.world_size)
    parallel_build(model_config, ckpt_dir, build_config, args.output_dir, workers, args.log_level, digests)

    t = time.strftime("%H:%M:%S", time.gmtime(time.time() - tik))
    logger.info(f"Total time of building all engines: {t}")


if __name__ == "__main__":
    main()
