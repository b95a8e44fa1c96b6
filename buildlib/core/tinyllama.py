"""A tiny Hugging Face Llama checkpoint with weights that are a pure function of a seed."""

from __future__ import annotations

import argparse
import math
import shutil
import tempfile
from pathlib import Path

from .errors import BackendUnavailable

DTYPES = ("float32", "float16", "bfloat16")
# Bump when the bytes write_checkpoint produces for given arguments change (it names the output dir).
GENERATOR_VERSION = 1


def write_checkpoint(out_dir: Path, *, seed: int = 0, hidden_size: int = 64, num_hidden_layers: int = 2,
                     num_attention_heads: int = 4, num_key_value_heads: int = 2, intermediate_size: int = 128,
                     vocab_size: int = 256, max_position_embeddings: int = 512, dtype: str = "float32") -> None:
    """Write config.json, generation_config.json and model.safetensors for a LlamaForCausalLM into out_dir.

    Weights come from a private CPU torch.Generator seeded with `seed` (the global RNG is untouched),
    drawn tensor by tensor in sorted-name order, so the same arguments give byte-identical files.
    The dir is written beside out_dir and renamed into place (an existing out_dir is replaced).
    """
    try:
        import torch
        from safetensors.torch import save_file
        from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM
    except ImportError as e:
        raise BackendUnavailable(f"the tinyllama checkpoint generator needs torch, transformers and safetensors "
                                 f"({e}): pip install torch==2.13.0 -e '.[aoti]' (on a GPU host, your CUDA torch)") \
            from None

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}; got {dtype!r}")
    config = LlamaConfig(hidden_size=hidden_size, num_hidden_layers=num_hidden_layers,
                         num_attention_heads=num_attention_heads, num_key_value_heads=num_key_value_heads,
                         intermediate_size=intermediate_size, vocab_size=vocab_size,
                         max_position_embeddings=max_position_embeddings, architectures=["LlamaForCausalLM"],
                         dtype=dtype)
    with torch.device("meta"):
        shapes = {name: tuple(t.shape) for name, t in LlamaForCausalLM(config).state_dict().items()}

    gen = torch.Generator(device="cpu").manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    for name in sorted(shapes):
        shape = shapes[name]
        noise = torch.randn(shape, generator=gen, dtype=torch.float32)
        if len(shape) == 1:  # RMSNorm gains: around 1, so a changed seed changes them too
            value = 1.0 + 0.1 * noise
        elif name.endswith("embed_tokens.weight"):
            value = noise
        else:  # Linear [out, in]: unit-variance activations keep the logits O(1), far from ties
            value = noise / math.sqrt(shape[1])
        tensors[name] = value.to(getattr(torch, dtype)).contiguous()

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        config.to_json_file(tmp / "config.json")
        GenerationConfig.from_model_config(config).to_json_file(tmp / "generation_config.json")
        save_file(tensors, tmp / "model.safetensors", metadata={"format": "pt"})
        for f in tmp.iterdir():
            f.chmod(0o644)
        tmp.chmod(0o755)  # mkdtemp makes it 0700
        if out_dir.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
            out_dir.rename(old / "x")
            tmp.rename(out_dir)
            shutil.rmtree(old)
        else:
            tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m buildlib.tinyllama", description=__doc__)
    p.add_argument("out_dir", type=Path)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--layers", type=int, default=2, help="num_hidden_layers")
    p.add_argument("--dtype", choices=DTYPES, default="float32")
    args = p.parse_args(argv)
    write_checkpoint(args.out_dir, seed=args.seed, num_hidden_layers=args.layers, dtype=args.dtype)


if __name__ == "__main__":
    main()
