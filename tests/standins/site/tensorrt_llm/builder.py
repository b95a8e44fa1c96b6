"""Stand-in for tensorrt_llm/builder.py: BuildConfig, build() of one rank, Engine.save() (config + rank engines)."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from . import _standin
from .llmapi.kv_cache_type import KVCacheType
from .logger import logger
from .models.modeling_utils import PretrainedConfig
from .plugin import PluginConfig
from .version import __version__

# BuildConfig field defaults (1.2.x): trtllm-build takes its argparse defaults from these.
BUILD_CONFIG_DEFAULTS: dict[str, Any] = {
    "max_input_len": 1024, "max_seq_len": None, "opt_batch_size": 8, "max_batch_size": 2048, "max_beam_width": 1,
    "max_num_tokens": 8192, "opt_num_tokens": None, "max_prompt_embedding_table_size": 0, "kv_cache_type": None,
    "gather_context_logits": False, "gather_generation_logits": False, "strongly_typed": True,
    "force_num_profiles": None, "profiling_verbosity": "layer_names_only", "enable_debug_output": False,
    "max_draft_len": 0, "speculative_decoding_mode": "NONE", "use_refit": False, "input_timing_cache": None,
    "output_timing_cache": "model.cache", "lora_config": None, "weight_sparsity": False, "weight_streaming": False,
    "plugin_config": None, "use_strip_plan": False, "max_encoder_input_len": 1024, "dry_run": False,
    "visualize_network": None, "monitor_memory": False, "use_mrope": False,
}
# Not properties of the engine: excluded from what the engine bytes depend on.
_NOT_IN_ENGINE = {"input_timing_cache", "output_timing_cache", "visualize_network", "monitor_memory", "dry_run"}


class BuildConfig:
    def __init__(self, plugin_config: PluginConfig | None = None, **values: Any) -> None:
        unknown = set(values) - set(BUILD_CONFIG_DEFAULTS)
        if unknown:
            raise ValueError(f"BuildConfig: extra inputs are not permitted: {sorted(unknown)}")
        self.values: dict[str, Any] = {**BUILD_CONFIG_DEFAULTS, **values}
        self.plugin_config = plugin_config if plugin_config is not None else PluginConfig()
        if self.values["lora_config"] is None:
            self.values["lora_config"] = {"lora_dir": [], "lora_ckpt_source": "hf", "max_lora_rank": 64,
                                          "lora_target_modules": [], "trtllm_modules_to_hf_modules": {}}

    def __getitem__(self, name: str) -> Any:
        return self.values[name]

    def __setitem__(self, name: str, value: Any) -> None:
        self.values[name] = value

    @classmethod
    def from_json_file(cls, path: str) -> BuildConfig:
        with open(path) as f:
            data = json.load(f)
        data.pop("plugin_config", None)
        return cls(**data)

    def update_kv_cache_type(self, architecture: str) -> None:
        """BuildConfig.update_kv_cache_type(): kv_cache_type against the deprecated paged_kv_cache (or, for
        Mamba and RecurrentGemma, paged_state) plugin flag; a contradiction asserts, unset follows the flag."""
        attr = "paged_state" if architecture in ("MambaForCausalLM", "RecurrentGemmaForCausalLM") else "paged_kv_cache"
        paged = self.plugin_config.get(attr)
        kv = self.values["kv_cache_type"]
        if isinstance(kv, str) and not isinstance(kv, KVCacheType):
            kv = self.values["kv_cache_type"] = KVCacheType(kv)
        if kv is not None:
            if paged is not None:
                assert (paged is True and kv == KVCacheType.PAGED) or (paged is False and kv != KVCacheType.PAGED)
            else:
                self.plugin_config.values[attr] = kv == KVCacheType.PAGED
        elif paged is not None:
            self.values["kv_cache_type"] = KVCacheType.PAGED if paged else KVCacheType.CONTINUOUS
        else:
            self.values["kv_cache_type"] = KVCacheType.PAGED
            self.plugin_config.values[attr] = True
        # The other flag is forced off (RecurrentGemma keeps paged_kv_cache equal to paged_state).
        if attr == "paged_state":
            same = architecture == "RecurrentGemmaForCausalLM"
            self.plugin_config.values["paged_kv_cache"] = self.plugin_config.get("paged_state") if same else False
        else:
            self.plugin_config.values["paged_state"] = False

    def to_dict(self) -> dict[str, Any]:
        out = copy.deepcopy(self.values)
        kv = out["kv_cache_type"]
        out["kv_cache_type"] = kv.name if isinstance(kv, KVCacheType) else kv
        out["plugin_config"] = self.plugin_config.to_dict()
        return out


class EngineConfig:
    """builder.py EngineConfig: an engine dir's config.json (pretrained_config, build_config, version)."""

    def __init__(self, pretrained_config: PretrainedConfig, build_config: BuildConfig, version: str) -> None:
        self.pretrained_config = pretrained_config
        self.build_config = build_config
        self.version = version

    @classmethod
    def from_json_file(cls, config_file: str | os.PathLike) -> EngineConfig:
        with open(config_file) as f:
            config = json.load(f)
        build = dict(config["build_config"])
        build.pop("plugin_config", None)
        return cls(PretrainedConfig.from_dict(config["pretrained_config"]), BuildConfig(**build), config["version"])


def _deduce_max_seq_len(pretrained: PretrainedConfig) -> int:
    n = getattr(pretrained, "max_position_embeddings", None)
    if n is None:
        logger.warning("max_position_embeddings is not set in the checkpoint config, using 2048 for max_seq_len")
        return 2048
    scaling = getattr(pretrained, "rotary_scaling", None)
    if isinstance(scaling, dict) and scaling.get("type", scaling.get("rope_type")) in ("linear", "dynamic"):
        n = int(n * float(scaling.get("factor", 1.0)))
    return int(n)


def _check_limits(bc: BuildConfig) -> None:
    """What check_max_num_tokens() does: clamp inconsistent limits with a warning, fill opt_num_tokens."""
    if bc["max_input_len"] > bc["max_seq_len"]:
        logger.warning(f"max_input_len ({bc['max_input_len']}) shouldn't be greater than max_seq_len "
                       f"({bc['max_seq_len']}), specifying to max_seq_len.")
        bc["max_input_len"] = bc["max_seq_len"]
    if bc.plugin_config.get("remove_input_padding"):
        cap = bc["max_seq_len"] * bc["max_batch_size"]
        if bc["max_num_tokens"] > cap:
            logger.warning(f"max_num_tokens ({bc['max_num_tokens']}) shouldn't be greater than max_seq_len * "
                           f"max_batch_size ({cap}), specifying to max_seq_len * max_batch_size ({cap}).")
            bc["max_num_tokens"] = cap
    else:
        bc["max_num_tokens"] = bc["max_batch_size"] * bc["max_seq_len"]
    if bc["opt_num_tokens"] is None:
        bc["opt_num_tokens"] = min(bc["max_num_tokens"], bc["max_batch_size"] * bc["max_beam_width"])


class Engine:
    def __init__(self, pretrained: PretrainedConfig, build_config: BuildConfig, plan_meta: dict[str, Any] | None,
                 plan_seed: str, managed_weights: bool) -> None:
        self.pretrained = pretrained
        self.build_config = build_config
        self.plan_meta = plan_meta
        self.plan_seed = plan_seed
        self.managed_weights = managed_weights

    def config_dict(self) -> dict[str, Any]:
        return {"version": __version__, "pretrained_config": self.pretrained.to_dict(),
                "build_config": self.build_config.to_dict()}

    def save(self, engine_dir: str) -> None:
        os.makedirs(engine_dir, exist_ok=True)
        rank = self.pretrained.mapping.rank
        self._save_lora(engine_dir)
        if rank == 0:
            with open(os.path.join(engine_dir, "config.json"), "w") as f:
                json.dump(self.config_dict(), f, indent=4)
        if self.plan_meta is not None:
            path = Path(engine_dir) / f"rank{rank}.engine"
            logger.info(f"Serializing engine to {path}...")
            _standin.write_plan(path, self.plan_meta, self.plan_seed)
            logger.info("Engine serialized. Total time: 00:00:00")
        if self.managed_weights:  # Engine.save(): rank<N>_managed_weights.safetensors beside its plan
            _standin.write_safetensors(Path(engine_dir) / f"rank{rank}_managed_weights.safetensors",
                                       {"weights": ("U8", [32], _standin.stream(self.plan_seed + ":mw", 32))})


    def _save_lora(self, engine_dir: str) -> None:
        """builder.py Engine.save(): every LoRA adapter of lora_config.lora_dir is copied into the engine dir and
        the config names the copy, so the engine dir is self-contained: for `hf`, lora/<i>/ gets adapter_config.json
        (shutil.copy2: FileNotFoundError where the adapter has none) and adapter_model.bin / .safetensors where they
        exist, and lora_dir[i] becomes "lora/<i>"; for `nemo`, the file is copied to lora/<i>.nemo. No adapter:
        a lora/ dir left there is removed."""
        lora = self.build_config["lora_config"]
        root = os.path.join(engine_dir, "lora")
        if not lora["lora_dir"]:
            if os.path.isdir(root):
                shutil.rmtree(root)
            return
        os.makedirs(root, exist_ok=True)
        for index, src in enumerate(lora["lora_dir"]):
            if lora["lora_ckpt_source"] == "hf":
                target = f"{root}/{index}"
                os.makedirs(target, exist_ok=True)
                shutil.copy2(os.path.join(src, "adapter_config.json"), target)
                for weights in ("adapter_model.bin", "adapter_model.safetensors"):
                    if os.path.exists(os.path.join(src, weights)):
                        shutil.copy2(os.path.join(src, weights), target)
                lora["lora_dir"][index] = f"lora/{index}"
            elif lora["lora_ckpt_source"] == "nemo":
                shutil.copyfile(src, f"{root}/{index}.nemo")
                lora["lora_dir"][index] = f"lora/{index}.nemo"


def build(rank: int, gpu: dict[str, Any], ckpt_dir: str | None, pretrained: PretrainedConfig,
          build_config: BuildConfig, digests: dict[str, str]) -> Engine:
    """Build one rank on one GPU (the fake work: deterministic bytes from checkpoint, options and versions)."""
    import tensorrt

    # commands/build.py build_model(): asserted before each rank is built.
    assert not build_config.plugin_config.get("pp_reduce_scatter") or pretrained.architecture == "MixtralForCausalLM", \
        "PP reduce scatter is only supported in the mixtral model."
    pretrained = copy.deepcopy(pretrained)
    pretrained.set_rank(rank)
    bc = copy.deepcopy(build_config)
    bc.plugin_config.dtype = pretrained.dtype
    if bc["max_seq_len"] is None:
        bc["max_seq_len"] = _deduce_max_seq_len(pretrained)
        logger.info(f"max_seq_len is not specified, using deduced value {bc['max_seq_len']}")
    bc.update_kv_cache_type(pretrained.architecture)
    _check_limits(bc)
    _optimize_model_with_config(bc)

    weights_digest = "dummy-weights"
    weights: dict[str, list] = {}
    if ckpt_dir is not None:
        path = Path(ckpt_dir) / f"rank{rank}.safetensors"
        assert path.is_file(), str(path)
        weights = _standin.tensor_shapes(path)
        weights_digest = _standin.sha256_files([path])

    _timing_cache(rank, gpu, bc)
    engine_options = {k: v for k, v in bc.to_dict().items() if k not in _NOT_IN_ENGINE}
    options_digest = hashlib.sha256(_standin.canonical(engine_options)).hexdigest()
    # Builder.create_builder_config(): use_refit sets BuilderFlag.REFIT, use_strip_plan REFIT_INDIVIDUAL and
    # STRIP_PLAN: the plan is refittable, and with STRIP_PLAN its refittable weights are left out of it.
    refittable = bool(bc["use_refit"] or bc["use_strip_plan"])
    stripped = bool(bc["use_strip_plan"])
    meta = None
    if not bc["dry_run"]:
        logger.trt("info", f"[MemUsageChange] Init CUDA: device {gpu['name']} (compute {gpu['compute_cap']})")
        meta = {"format": 1, "tensorrt_version": tensorrt.__version__, "tensorrt_llm_version": __version__,
                "compute_capability": gpu["compute_cap"], "rank": rank,
                "world_size": pretrained.mapping.world_size, "architecture": pretrained.architecture,
                "dtype": pretrained.dtype, "vocab_size": pretrained.vocab_size, "options_digest": options_digest,
                "weights_digest": None if stripped else weights_digest, **digests,
                "refittable_weights": weights if refittable else {}, "weights_stripped": stripped}
        logger.trt("info", "Engine generation completed in 0.01 seconds.")
    seed = _standin.canonical([meta, options_digest]).decode()
    return Engine(pretrained, bc, meta, seed, managed_weights=bool(bc.plugin_config.get("manage_weights")))


def _optimize_model_with_config(bc: BuildConfig) -> None:
    """builder.py optimize_model_with_config(): the SwiGLU GEMM plugins need the fused MLP, fp8 only."""
    swiglu = bc.plugin_config.get("gemm_swiglu_plugin")
    low_latency = bc.plugin_config.get("low_latency_gemm_swiglu_plugin")
    if swiglu or low_latency:
        if not bc.plugin_config.get("use_fused_mlp"):
            raise RuntimeError("GemmSwiGLU plugin requires --use_fused_mlp flag")
        if swiglu not in ("fp8",) and low_latency not in ("fp8",):
            raise RuntimeError(f"GemmSwiGLU plugin currently has limited support: fp8 only, got: {swiglu}"
                               f"got: {low_latency}")


def _timing_cache(rank: int, gpu: dict[str, Any], bc: BuildConfig) -> None:
    """Read --input_timing_cache (ignored when missing); rank 0 writes --output_timing_cache (relative: CWD)."""
    import tensorrt

    entries: list[str] = []
    src = bc["input_timing_cache"]
    if src is not None and os.path.exists(src):
        try:
            loaded = json.loads(Path(src).read_bytes().split(b"\n", 1)[1])
            entries = list(loaded.get("entries", []))
        except (IndexError, ValueError):
            logger.warning("Invalid timing cache, using freshly created one")
    elif src is not None:
        logger.warning("Invalid timing cache, using freshly created one")
    out = bc["output_timing_cache"]
    if out is None or rank != 0:
        return
    entry = f"{gpu['name']}|{bc['max_batch_size']}|{bc['max_seq_len']}|{bc['max_num_tokens']}"
    entries = sorted(set(entries) | {entry})
    body = {"tensorrt_version": tensorrt.__version__, "device": gpu["name"], "entries": entries}
    Path(out).write_bytes(b"STANDIN-TRT-TIMING-CACHE\n" + _standin.canonical(body))
    logger.info(f"Timing cache serialized to {out}")
