"""Stand-in for tensorrt_llm/models/modeling_utils.py: QuantConfig, PretrainedConfig, PretrainedModel (checkpoints)."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
from pathlib import Path
from typing import Any, ClassVar

from .._standin import canonical, read_safetensors_header, sha256_files, stream, visible_gpus, write_safetensors
from ..logger import logger
from ..mapping import Mapping
from ..quantization.mode import KV_CACHE_QUANT_ALGO_LIST, QUANT_ALGO_LIST, QuantAlgo


@dataclasses.dataclass
class QuantConfig:
    """Serializable quantization configuration, part of the PretrainedConfig (same fields as the real one)."""

    quant_algo: QuantAlgo | None = None
    kv_cache_quant_algo: QuantAlgo | None = None
    group_size: int = 128
    smoothquant_val: float = 0.5
    clamp_val: list[float] | None = None
    use_meta_recipe: bool = False
    has_zero_point: bool = False
    pre_quant_scale: bool = False
    exclude_modules: list[str] | None = None

    def __post_init__(self) -> None:
        # The real dataclass does not convert; from_dict() of a saved config.json hands in strings.
        if isinstance(self.quant_algo, str):
            self.quant_algo = QuantAlgo(self.quant_algo)
        if isinstance(self.kv_cache_quant_algo, str):
            self.kv_cache_quant_algo = QuantAlgo(self.kv_cache_quant_algo)

    @property
    def _requires_calibration(self) -> bool:
        return self.quant_algo in (set(QUANT_ALGO_LIST) - {
            QuantAlgo.W8A16, QuantAlgo.W4A16, QuantAlgo.FP8_PER_CHANNEL_PER_TOKEN
        }) or self.kv_cache_quant_algo in KV_CACHE_QUANT_ALGO_LIST

    @property
    def _requires_modelopt_quantization(self) -> bool:
        if self.quant_algo in (QuantAlgo.NVFP4, QuantAlgo.FP8, QuantAlgo.W4A16_AWQ, QuantAlgo.W4A8_AWQ,
                               QuantAlgo.W8A8_SQ_PER_CHANNEL, QuantAlgo.MIXED_PRECISION):
            return True
        return self.quant_algo is None and self.kv_cache_quant_algo == QuantAlgo.FP8

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> QuantConfig:
        return cls(**config)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class PretrainedConfig:
    """The TensorRT-LLM checkpoint config; to_dict() has the shape of the real one (mapping without rank)."""

    def __init__(self, *, architecture: str, dtype: str, hidden_size: int, num_hidden_layers: int,
                 num_attention_heads: int, vocab_size: int | None = None, hidden_act: str = "gelu",
                 logits_dtype: str = "float32", norm_epsilon: float = 1e-5,
                 position_embedding_type: str = "learned_absolute", max_position_embeddings: int | None = None,
                 rotary_embedding_dim: int | None = None, num_key_value_heads: int | None = None,
                 intermediate_size: int | None = None, mapping: Mapping | dict | None = None,
                 quantization: QuantConfig | dict | None = None, use_parallel_embedding: bool = False,
                 embedding_sharding_dim: int = 0, head_size: int | None = None, qk_layernorm: bool = False,
                 runtime_defaults: dict | None = None, **kwargs: Any) -> None:
        self.architecture = architecture
        self.dtype = dtype
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.hidden_act = hidden_act
        self.logits_dtype = logits_dtype
        self.norm_epsilon = norm_epsilon
        self.runtime_defaults = runtime_defaults
        self.position_embedding_type = position_embedding_type
        self.num_key_value_heads = num_key_value_heads if num_key_value_heads is not None else num_attention_heads
        self.intermediate_size = intermediate_size if intermediate_size is not None else hidden_size * 4
        self.max_position_embeddings = max_position_embeddings
        if mapping is None:
            mapping = Mapping()
        elif isinstance(mapping, dict):
            mapping = Mapping.from_dict(mapping)
        self.mapping = mapping
        if quantization is None:
            quantization = QuantConfig()
        elif isinstance(quantization, dict):
            quantization = QuantConfig.from_dict(quantization)
        self.quantization = quantization
        self.use_parallel_embedding = use_parallel_embedding
        self.embedding_sharding_dim = embedding_sharding_dim
        self.head_size = head_size if head_size is not None else hidden_size // num_attention_heads
        self.qk_layernorm = qk_layernorm
        if rotary_embedding_dim is None:
            rotary_embedding_dim = kwargs.get("rotary_dim", int(self.head_size * kwargs.get("rotary_pct", 1.0)))
        self.rotary_embedding_dim = rotary_embedding_dim
        for key, value in kwargs.items():
            setattr(self, key, value)

    @property
    def quant_algo(self) -> QuantAlgo | None:
        return self.quantization.quant_algo

    def set_rank(self, rank: int) -> None:
        self.mapping.rank = rank

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> PretrainedConfig:
        from . import MODEL_MAP

        model_cls = MODEL_MAP[config["architecture"]]  # KeyError for an unknown architecture, as the real one
        return getattr(model_cls, "config_class", cls)(**copy.deepcopy(config))

    @classmethod
    def from_json_file(cls, config_file: str | os.PathLike) -> PretrainedConfig:
        with open(config_file) as f:
            return cls.from_dict(json.load(f))

    @classmethod
    def from_checkpoint(cls, ckpt_dir: str) -> PretrainedConfig:
        return cls.from_json_file(os.path.join(ckpt_dir, "config.json"))

    def to_dict(self) -> dict[str, Any]:
        output = copy.deepcopy({k: v for k, v in self.__dict__.items()})
        output["position_embedding_type"] = str(self.position_embedding_type)
        output["mapping"] = self.mapping.to_dict()
        output["mapping"].pop("rank")
        output["quantization"] = self.quantization.to_dict()
        return output

    def to_json_file(self, config_file: str | os.PathLike) -> None:
        with open(config_file, "w") as f:
            json.dump(self.to_dict(), f, indent=4)


# HF config.json fields the stand-in reads, with the defaults of the matching transformers config class.
_HF_DEFAULTS: dict[str, dict[str, Any]] = {
    "llama": {"vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
              "num_attention_heads": 32, "num_key_value_heads": None, "hidden_act": "silu",
              "max_position_embeddings": 2048, "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "rope_scaling": None},
    "mistral": {"vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
                "num_attention_heads": 32, "num_key_value_heads": 8, "hidden_act": "silu",
                "max_position_embeddings": 131072, "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "rope_scaling": None},
    "qwen2": {"vocab_size": 151936, "hidden_size": 4096, "intermediate_size": 22016, "num_hidden_layers": 32,
              "num_attention_heads": 32, "num_key_value_heads": 32, "hidden_act": "silu",
              "max_position_embeddings": 32768, "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "rope_scaling": None},
    "gpt_neox": {"vocab_size": 50432, "hidden_size": 6144, "intermediate_size": 24576, "num_hidden_layers": 44,
                 "num_attention_heads": 64, "num_key_value_heads": None, "hidden_act": "gelu",
                 "max_position_embeddings": 2048, "layer_norm_eps": 1e-5, "rotary_pct": 0.25,
                 "rotary_emb_base": 10000, "rope_scaling": None},
}
_WEIGHT_DTYPE = {"float16": "F16", "bfloat16": "BF16", "float32": "F32"}
_QUANT_WEIGHT_DTYPE = {"W8A16": "I8", "W8A16_GPTQ": "I8", "W4A16": "I8", "W4A16_AWQ": "I8", "W4A16_GPTQ": "I8",
                       "W4A8_AWQ": "I8", "W8A8_SQ_PER_CHANNEL": "I8", "FP8": "F8_E4M3",
                       "FP8_PER_CHANNEL_PER_TOKEN": "F8_E4M3", "FP8_BLOCK_SCALES": "F8_E4M3", "NVFP4": "U8"}
_TENSOR_ELEMS = 64  # every stand-in tensor is tiny: the bytes only have to be deterministic


def _infer_dtype(dtype: str, hf: dict[str, Any]) -> str:
    if dtype == "auto":
        torch_dtype = hf.get("torch_dtype") or hf.get("dtype")
        return torch_dtype if torch_dtype in ("float16", "bfloat16") else "float16"
    if dtype not in _WEIGHT_DTYPE:
        raise ValueError(f"Unsupported dtype: {dtype}")
    return dtype


def _hf_digest(hf_dir: Path) -> str:
    """The HF checkpoint's bytes, read as the real loader reads them: every *.safetensors shard is opened
    with safetensors (safe_open parses and checks its header: random bytes raise), config.json is JSON."""
    files = sorted(p for p in hf_dir.iterdir() if p.is_file() and not p.name.startswith("."))
    shards = [p for p in files if p.suffix == ".safetensors"]
    if not shards:
        raise FileNotFoundError(f"no *.safetensors weights in {hf_dir}")
    for p in shards:
        try:
            read_safetensors_header(p)
        except (ValueError, KeyError, TypeError) as e:
            # safetensors_rust.SafetensorError, raised by safe_open() in the real loader
            raise RuntimeError(f"Error while deserializing header: {p}: {e}") from None
    return sha256_files(files, root=hf_dir)


def _record_conversion(hf_dir: Path, mapping: Mapping) -> None:
    """Test hook: STANDIN_CONVERT_LOG=<file> gets one JSON line per rank converted (and $STANDIN_RUN_TAG)."""
    path = os.environ.get("STANDIN_CONVERT_LOG")
    if path:
        rec = {"hf_dir": str(hf_dir), "rank": mapping.rank, "tp": mapping.tp_size, "pp": mapping.pp_size,
               "run": os.environ.get("STANDIN_RUN_TAG")}
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (json.dumps(rec) + "\n").encode())  # one O_APPEND write: safe across processes
        finally:
            os.close(fd)


class PretrainedModel:
    """A converted model of one rank: its config and its (stand-in) weights."""

    config_class: ClassVar[type[PretrainedConfig]] = PretrainedConfig
    hf_family: ClassVar[str] = "llama"
    position_embedding_type: ClassVar[str] = "rope_gpt_neox"

    def __init__(self, config: PretrainedConfig, weights: dict[str, tuple[str, list[int], bytes]] | None = None):
        self.config = config
        self.weights = weights if weights is not None else {}

    # -- conversion ---------------------------------------------------------------------------------------------
    @classmethod
    def _config_from_hf(cls, hf_dir: Path, dtype: str, mapping: Mapping | None,
                        quant_config: QuantConfig | None) -> PretrainedConfig:
        hf = json.loads((hf_dir / "config.json").read_text())
        d = {**_HF_DEFAULTS[cls.hf_family], **{k: v for k, v in hf.items() if v is not None}}
        arch = (hf.get("architectures") or [cls.__name__])[0]
        extra: dict[str, Any] = {"rotary_base": d.get("rope_theta", d.get("rotary_emb_base", 10000.0)),
                                 "rotary_scaling": d.get("rope_scaling"), "mlp_bias": False, "attn_bias": False,
                                 "tie_word_embeddings": bool(hf.get("tie_word_embeddings", False))}
        if cls.hf_family == "qwen2":
            extra["qwen_type"] = "qwen2"
        if cls.hf_family == "gpt_neox":
            extra["rotary_pct"] = d.get("rotary_pct", 0.25)
        mapping = copy.deepcopy(mapping) if mapping is not None else Mapping()
        heads = int(d["num_attention_heads"])
        if heads % mapping.tp_size:
            raise ValueError(f"num_attention_heads ({heads}) must be divisible by tp_size ({mapping.tp_size})")
        return cls.config_class(
            architecture=arch, dtype=_infer_dtype(dtype, hf), vocab_size=int(d["vocab_size"]),
            hidden_size=int(d["hidden_size"]), num_hidden_layers=int(d["num_hidden_layers"]),
            num_attention_heads=heads, num_key_value_heads=d.get("num_key_value_heads"),
            hidden_act=d["hidden_act"], intermediate_size=int(d["intermediate_size"]),
            norm_epsilon=float(d.get("rms_norm_eps", d.get("layer_norm_eps", 1e-5))),
            position_embedding_type=cls.position_embedding_type,
            max_position_embeddings=int(d["max_position_embeddings"]), mapping=mapping,
            quantization=copy.deepcopy(quant_config) if quant_config is not None else QuantConfig(), **extra)

    @classmethod
    def _weights_for(cls, config: PretrainedConfig, hf_digest: str) -> dict[str, tuple[str, list[int], bytes]]:
        m = config.mapping
        q = config.quantization
        layer_dtype = _QUANT_WEIGHT_DTYPE.get(str(q.quant_algo), _WEIGHT_DTYPE[config.dtype])
        names: list[tuple[str, str]] = []
        if m.is_first_pp_rank():
            names.append(("transformer.vocab_embedding.weight", _WEIGHT_DTYPE[config.dtype]))
        names += [(f"transformer.layers.{i}.attention.qkv.weight", layer_dtype)
                  for i in m.pp_layers(config.num_hidden_layers)]
        if m.is_last_pp_rank():
            names += [("transformer.ln_f.weight", _WEIGHT_DTYPE[config.dtype]),
                      ("lm_head.weight", _WEIGHT_DTYPE[config.dtype])]
        seed = canonical([hf_digest, m.rank, m.tp_size, m.pp_size, m.cp_size, config.dtype, q.to_dict()]).decode()
        out = {}
        for name, dt in names:
            n = _TENSOR_ELEMS * {"F16": 2, "BF16": 2, "F32": 4}.get(dt, 1)
            out[name] = (dt, [_TENSOR_ELEMS], stream(f"{seed}:{name}", n))
        return out

    @classmethod
    def from_hugging_face(cls, hf_model_or_dir: str | os.PathLike, dtype: str = "auto",
                          mapping: Mapping | None = None, quant_config: QuantConfig | None = None,
                          **kwargs: Any) -> PretrainedModel:
        """Read the HF dir and produce this rank's weights (deterministic from the HF files' bytes)."""
        hf_dir = Path(hf_model_or_dir)
        config = cls._config_from_hf(hf_dir, dtype, mapping, quant_config)
        _record_conversion(hf_dir, config.mapping)
        if config.quantization._requires_calibration:
            raise RuntimeError(
                f"{cls.__name__}.from_hugging_face: quant_algo={config.quantization.quant_algo} "
                f"kv_cache_quant_algo={config.quantization.kv_cache_quant_algo} needs calibration; "
                f"use {cls.__name__}.quantize() (ModelOpt, needs a GPU) instead")
        return cls(config, cls._weights_for(config, _hf_digest(hf_dir)))

    @classmethod
    def quantize(cls, hf_model_dir: str | os.PathLike, output_dir: str | os.PathLike, dtype: str = "auto",
                 mapping: Mapping | None = None, quant_config: QuantConfig | None = None, *, device: str = "cuda",
                 calib_dataset: str = "cnn_dailymail", calib_batches: int = 512, calib_batch_size: int = 1,
                 calib_max_seq_length: int = 512, random_seed: int = 1234, tokenizer_max_seq_length: int = 2048,
                 **kwargs: Any) -> None:
        """Calibrated quantization (ModelOpt in the real one): writes every rank and config.json; needs a GPU."""
        if device == "cuda" and not visible_gpus():
            raise RuntimeError("CUDA error: no CUDA-capable device is detected (calibration runs on a GPU)")
        hf_dir = Path(hf_model_dir)
        base = cls._config_from_hf(hf_dir, dtype, mapping, quant_config)
        os.makedirs(output_dir, exist_ok=True)
        digest = _hf_digest(hf_dir)
        for rank in range(base.mapping.world_size):
            config = copy.deepcopy(base)
            config.set_rank(rank)
            cls(config, cls._weights_for(config, digest)).save_checkpoint(output_dir, save_config=(rank == 0))
        logger.info(f"Quantized model exported to {output_dir}")

    @classmethod
    def from_checkpoint(cls, ckpt_dir: str, rank: int | None = None,
                        config: PretrainedConfig | None = None) -> PretrainedModel:
        if config is None:
            config = PretrainedConfig.from_json_file(os.path.join(ckpt_dir, "config.json"))
        if rank is not None:
            config.set_rank(rank)
        weights_path = os.path.join(ckpt_dir, f"rank{config.mapping.rank}.safetensors")
        assert os.path.isfile(weights_path), weights_path
        read_safetensors_header(Path(weights_path))
        return cls(config)

    def save_checkpoint(self, output_dir: str | os.PathLike, save_config: bool = True) -> None:
        rank = self.config.mapping.rank
        write_safetensors(Path(output_dir) / f"rank{rank}.safetensors", self.weights)
        if save_config:
            self.config.to_json_file(os.path.join(output_dir, "config.json"))
