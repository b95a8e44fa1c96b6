"""Worker (subprocess): torch.export + AOTInductor-compile a Hugging Face causal LM, or check a package vs eager."""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..host.isa import host_isa, march_for

if TYPE_CHECKING:
    import torch
    from torch.export import ExportedProgram

# Transformers' default. "eager" attention exports no differently: bounded dims are proven by torch 2.13 and
# need deferred asserts on torch 2.11 with either (see _export); validate's reference runs the same attention.
ATTN_IMPLEMENTATION = "sdpa"

# Relative to max |eager logit|. float32: inductor only reorders reductions and fuses pointwise ops
# (seen on the tiny Llama: 5e-7 CPU, 4e-7 CUDA); 1e-4 leaves room for deep models and still flags any real
# defect, which is O(1). Half precision: eager rounds every op's output to 16 bits, inductor's fused kernels
# keep fp32 inside and round once, so the two differ by a few units of roundoff per layer (fp16: u = 4.9e-4;
# bf16: u = 3.9e-3, seen: 9.8e-3 = one bf16 ulp of the largest logit); 1e-2 is ~20 u for fp16, 4e-2 ~10 u
# for bf16, both far below a defect's O(1).
TOLERANCE = {"float32": 1e-4, "float16": 1e-2, "bfloat16": 4e-2}
PROMPT_SEED = 1234  # the validation prompt's token ids come from this seed: no tokenizer needed


def log(msg: str) -> None:
    print(f"[aoti_worker] {msg}", file=sys.stderr, flush=True)


def phase(name: str) -> None:
    """The phase this worker enters, for doit's live view (buildlib.progress reads these lines)."""
    print(f"[phase] {name}", file=sys.stderr, flush=True)


def _configure(req: dict[str, Any]) -> str:
    """Environment that must be set before torch is imported; returns the -march baseline pinned.

    CPU packages get the baseline of this host's ISA tier (the engine's arch). A CUDA package's C++
    wrapper would otherwise be built with -march=native plus the host's SIMD flags (e.g. -mamx-tile on
    the H100 host); it gets the bare machine's baseline and no SIMD tier, so it does not depend on
    which CPU built it.
    """
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    if req.get("cache_dir"):
        cache = Path(req["cache_dir"]).resolve()
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache)
        os.environ["TRITON_CACHE_DIR"] = str(cache / "triton")
    if req["device"] == "cpu":
        march = march_for(host_isa())
    else:
        march = march_for(platform.machine().lower())
        os.environ["ATEN_CPU_CAPABILITY"] = "default"  # inductor's pick_vec_isa() -> no SIMD flags
        # The same pick without the probes: pick_vec_isa() first tests every ISA the CPU has by compiling a test
        # library and dlopen-ing it in a fresh Python that imports torch (cpu_vec_isa.VecISA.check_build), only to
        # drop them all for "default". That cost ~45 s per build and again per validation's package load on the
        # H100 host (ten probes of ~4.5 s; bench/RESULTS.md). CPU packages keep the probes: they use the pick.
        os.environ["TORCHINDUCTOR_VEC_ISA_OK"] = "0"
    os.environ["TORCHINDUCTOR_CPP_MARCH"] = march
    return march


def _keep_headers_in(cache: Path) -> None:
    """Inductor's precompiled headers (~130-280 MB per compiler, flags and torch) go into the build cache.

    Inductor keeps them under tempfile.gettempdir(), not TORCHINDUCTOR_CACHE_DIR, so every build wrote outside
    this project's dirs and a fresh runner made them again (~11 s of a 33 s cold CPU build here) even with the
    shared cache. Beside the rest of the cache they are this project's, and travel with it."""
    from torch._inductor import codecache

    if not hasattr(codecache, "_HEADER_DIR"):
        log("this torch keeps its precompiled headers elsewhere: they are made again on each fresh host")
        return
    codecache._HEADER_DIR = str(cache / "precompiled_headers")
    codecache._HEADER_LOCK_DIR = str(cache / "precompiled_headers" / "locks")


def _drop_old_outputs(cache: Path) -> None:
    """Remove what builds before outputs went to a scratch dir (compile_package) left in the cache: a dir per
    graph holding its wrapper, kernels and model .so (the weights of whichever build wrote it last). Nothing reads
    them again, and a cache that carries them is shared with them."""
    for d in cache.iterdir() if cache.is_dir() else ():
        if d.is_dir() and any(d.glob("*.wrapper.so")):
            shutil.rmtree(d, ignore_errors=True)


def _load_model(req: dict[str, Any]) -> torch.nn.Module:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(req["checkpoint"], dtype=getattr(torch, req["dtype"]),
                                                 attn_implementation=ATTN_IMPLEMENTATION, local_files_only=True)
    return model.eval().to(req["device"])


def _logits_only(model: torch.nn.Module) -> torch.nn.Module:
    """input_ids [batch, seq] -> logits [batch, seq, vocab]: no KV cache, no other outputs."""
    import torch

    class LogitsOnly(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
            return self.inner(input_ids=input_ids, use_cache=False).logits

    return LogitsOnly(model)


def _prompt(vocab: int, batch: int, seq: int, device: str) -> torch.Tensor:
    import torch

    gen = torch.Generator().manual_seed(PROMPT_SEED)
    return torch.randint(0, vocab, (batch, seq), generator=gen).to(device)


def _input_ranges(ep: ExportedProgram) -> list[list[int | None]]:
    """[lo, hi] of each input_ids dim as the exported program accepts it (hi None: unbounded)."""
    name = ep.graph_signature.user_inputs[0]
    node = next(n for n in ep.graph.nodes if n.op == "placeholder" and n.name == name)
    ranges: list[list[int | None]] = []
    for size in node.meta["val"].shape:
        if isinstance(size, int):
            ranges.append([size, size])
            continue
        vr = ep.range_constraints[size.node.expr]
        ranges.append([int(vr.lower), None if math.isinf(float(vr.upper)) else int(vr.upper)])
    return ranges


def _violations(e: Exception) -> str:
    """The guards named in a constraint violation (`- Not all values of seq ...`), else the first line."""
    lines = [ln.strip() for ln in str(e).splitlines()]
    return " ".join(ln for ln in lines if ln.startswith("- ")) or next((ln for ln in lines if ln), "")


def _export(module: torch.nn.Module, sample: torch.Tensor, max_batch: int,
            max_seq: int) -> tuple[ExportedProgram, dict[str, Any]]:
    """Export input_ids with batch in [1, max_batch] and seq in [1, max_seq], trying in turn:

    - "bounded": named Dims; export must prove every guard over the whole range (torch 2.13 does);
    - "bounded-deferred": the same Dims, guards it cannot prove become runtime asserts in the graph.
      Torch 2.11 (CPU and CUDA, sdpa and eager attention alike) cannot prove the trivially true
      `min(16*seq, 32*seq) == 16*seq` (and, CUDA sdpa, `seq*(8 + seq - seq % 8) > 1`) and raises a
      constraint violation; deferred, the asserts always hold and the envelope is still enforced;
    - "auto": Dim.AUTO, no envelope (the package accepts any shape).
    """
    from torch.export import Dim, export

    bounded = {0: Dim("batch", min=1, max=max_batch) if max_batch > 1 else None,
               1: Dim("seq", min=1, max=max_seq) if max_seq > 1 else None}
    attempts: list[tuple[str, dict[int, Any], dict[str, bool]]] = [
        ("bounded", bounded, {}),
        ("bounded-deferred", bounded, {"prefer_deferred_runtime_asserts_over_guards": True}),
        ("auto", {0: Dim.AUTO, 1: Dim.AUTO}, {}),
    ]
    failures: list[str] = []
    for mode, dims, kwargs in attempts:
        try:
            ep = export(module, (sample,), dynamic_shapes={"input_ids": dims}, strict=False, **kwargs)
        except Exception as e:  # torch raises several types (UserError for constraint violations)
            failures.append(f"{mode}: {type(e).__name__}: {_violations(e)}")
            log(f"export ({mode}) failed: {e}")
            continue
        batch, seq = _input_ranges(ep)
        return ep, {"mode": mode, "batch": batch, "seq": seq, "note": "; ".join(failures) or None}
    raise SystemExit("torch.export failed: " + "; ".join(failures))


def compile_package(req: dict[str, Any]) -> dict[str, Any]:
    march: str | None = _configure(req)
    import torch
    from torch._inductor import config as inductor_config
    from torch._inductor.cpu_vec_isa import pick_vec_isa

    if getattr(inductor_config.cpp, "march", None) != march:  # the knob is newer than some torch releases
        log(f"this torch ignores TORCHINDUCTOR_CPP_MARCH={march}: the C++ is built for this exact CPU")
        march = None

    if req.get("cache_dir"):
        cache = Path(req["cache_dir"]).resolve()
        _keep_headers_in(cache)
        _drop_old_outputs(cache)
    package = Path(req["package"])
    package.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    phase("load")
    model = _load_model(req)
    max_batch, max_seq = req["max_batch_size"], req["max_seq_len"]
    sample = _prompt(model.config.vocab_size, min(2, max_batch), min(8, max_seq), req["device"])
    log(f"loaded {req['checkpoint']} ({req['dtype']}, {req['device']}) in {time.perf_counter() - t0:.1f}s; "
        f"exporting batch<={max_batch} seq<={max_seq}")
    t1 = time.perf_counter()
    phase("export")
    with torch.no_grad():
        ep, dynamic = _export(_logits_only(model), sample, max_batch, max_seq)
    export_s = time.perf_counter() - t1
    t2 = time.perf_counter()
    phase("compile")  # before pick_vec_isa(): on the CPU its probes are part of the compile, not of the export
    log(f"exported in {export_s:.1f}s: {dynamic}; compiling (march={march}, vec isa {pick_vec_isa()})")
    # refit: the weights stay out of the compiled code and go to weights.safetensors beside the package
    configs: dict[str, Any] = {"aot_inductor.package_constants_in_so": False} if req.get("refit") else {}
    configs.update({k: True for k in ("max_autotune", "coordinate_descent_tuning") if req.get(k)})  # aoti_recipe
    # This build's own outputs (wrapper and kernel sources and objects, the weights' object, the model .so: the
    # model's size) go to a dir of this build, removed once packaged. By default Inductor writes them into its
    # cache dir under the graph's hash, where nothing reuses them (AOT compiles bypass the FX graph cache): every
    # build added a copy of its weights to the cache the store shares, and two builds of one graph with other
    # weights on one host wrote the same .so. aoti_compile_and_package refuses the knob among its options (the
    # package path names the package), so it is set for this process.
    scratch = package.parent / ".aoti-out"
    inductor_config.aot_inductor.output_path = str(scratch)
    out = torch._inductor.aoti_compile_and_package(ep, package_path=str(package), inductor_configs=configs)
    shutil.rmtree(scratch)
    compile_s = time.perf_counter() - t2
    log(f"compiled {out} in {compile_s:.1f}s")
    if req.get("refit"):
        fqns = torch._inductor.aoti_load_package(str(package)).get_constant_fqns()
        _save_weights(_logits_only(model), fqns, Path(req["weights"]))
    return {"package": str(out), "export_s": round(export_s, 2), "compile_s": round(compile_s, 2),
            "dynamic_shapes": dynamic, "attn_implementation": ATTN_IMPLEMENTATION, "march": march,
            "vec_isa": str(pick_vec_isa()), "isa": host_isa() if req["device"] == "cpu" else None,
            "torch": torch.__version__}


def _tensors(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer by FQN, tied ones under each of their names."""
    return {**dict(module.named_parameters(remove_duplicate=False)),
            **dict(module.named_buffers(remove_duplicate=False))}


def _save_weights(module: torch.nn.Module, fqns: list[str], path: Path) -> None:
    """The module's tensors the package takes as constants (by their FQN), written as one safetensors file.
    Tensors that share storage (tied embeddings) are each written whole: safetensors stores no aliases."""
    from safetensors.torch import save_file

    have = _tensors(module)
    missing = [f for f in fqns if f not in have]
    if missing:
        raise SystemExit(f"the compiled package takes constants the model does not have: {', '.join(missing[:5])}")
    seen: set[int] = set()
    out = {}
    for f in fqns:
        t = have[f].detach().cpu().contiguous()
        out[f] = t.clone() if t.data_ptr() in seen else t
        seen.add(t.data_ptr())
    tmp = path.with_name(path.name + ".tmp")
    save_file(out, str(tmp))
    os.replace(tmp, path)


def refit_weights(req: dict[str, Any]) -> dict[str, Any]:
    """A weights-only update: the weights of the new checkpoint under the names, dtypes and shapes of the old
    engine's weights.safetensors (refused where any differs: then the engine is built instead). CPU only."""
    _configure(req)
    from safetensors import safe_open

    t0 = time.perf_counter()
    phase("load")
    with safe_open(req["source_weights"], framework="pt") as f:
        want = {k: (f.get_slice(k).get_dtype(), list(f.get_slice(k).get_shape())) for k in f.keys()}  # noqa: SIM118
    module = _logits_only(_load_model({**req, "device": "cpu"}))
    have = _tensors(module)
    dtype_name = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}
    for name, (dtype, shape) in want.items():
        t = have.get(name)
        if t is None:
            raise SystemExit(f"refit: the new checkpoint has no tensor for the engine's constant {name}")
        if list(t.shape) != shape or dtype_name.get(str(t.dtype).removeprefix("torch.")) != dtype:
            raise SystemExit(f"refit: {name} is {t.dtype} {list(t.shape)} in the new checkpoint, {dtype} {shape} in "
                             "the engine")
    phase("write")
    _save_weights(module, list(want), Path(req["weights"]))
    log(f"refitted {len(want)} constants in {time.perf_counter() - t0:.1f}s")
    return {"constants": len(want), "refit_s": round(time.perf_counter() - t0, 2)}


def _load_runner(req: dict[str, Any]) -> Any:
    """The compiled package; with its weights loaded from weights.safetensors when it was built for refit."""
    import torch

    runner = torch._inductor.aoti_load_package(req["package"])
    if req.get("refit"):
        from safetensors.torch import load_file

        runner.load_constants(load_file(req["weights"], device=req["device"]), check_full_update=True)
    return runner


def validate_package(req: dict[str, Any]) -> dict[str, Any]:
    _configure(req)
    import torch

    t0 = time.perf_counter()
    phase("load")
    runner = _load_runner(req)
    model = _load_model(req)
    vocab = model.config.vocab_size
    b, s = req["max_batch_size"], req["max_seq_len"]
    # a prefill-like shape, a single token, and the full batch: three points of the envelope
    shapes = list(dict.fromkeys([(min(2, b), min(7, s)), (1, 1), (b, min(req["max_input_len"], s, 13))]))
    abs_err = rel_err = 0.0
    tokens: dict[str, list[int]] = {"compiled": [], "eager": []}
    phase("compare")
    with torch.no_grad():
        for shape in shapes:
            ids = _prompt(vocab, *shape, req["device"])
            got = runner(ids).double().cpu()
            want = model(input_ids=ids, use_cache=False).logits.double().cpu()
            if got.shape != want.shape:
                raise SystemExit(f"package returned logits of shape {list(got.shape)} for input {list(shape)}; "
                                 f"eager gives {list(want.shape)}")
            err = (got - want).abs().max().item()
            abs_err = max(abs_err, err)
            rel_err = max(rel_err, err / max(want.abs().max().item(), 1e-30))
            tokens["compiled"] += got[:, -1].argmax(-1).tolist()
            tokens["eager"] += want[:, -1].argmax(-1).tolist()
            log(f"input {list(shape)}: max_abs_err={err:.3g}")
    tolerance = TOLERANCE[req["dtype"]]
    tokens_match = tokens["compiled"] == tokens["eager"]
    # near-ties may flip in half precision, so tokens must agree only in float32
    ok = rel_err <= tolerance and (tokens_match or req["dtype"] != "float32")
    out = {"ok": ok, "max_abs_err": abs_err, "max_rel_err": rel_err, "tolerance": tolerance,
           "tokens": tokens, "tokens_match": tokens_match, "shapes": [list(x) for x in shapes]}
    if ok:
        phase("measure")
        out["perf"] = measure(runner, model, vocab, b, min(req["max_input_len"], s), req["device"])
        log(f"speed: {out['perf']['tokens_per_s']:,.0f} tokens/s prefill, {out['perf']['prefill']['speedup']:.2f}x "
            f"eager; decode {out['perf']['decode']['engine']['tokens_per_s']:,.0f} tokens/s")
    return {**out, "validate_s": round(time.perf_counter() - t0, 2)}


def measure(runner: Any, model: torch.nn.Module, vocab: int, batch: int, input_len: int,
            device: str) -> dict[str, Any]:
    """The compiled package against eager PyTorch, same inputs, same process (buildlib.core.perf): a prefill at
    batch x input_len and a one-token step at batch."""
    import torch

    from ..core import perf
    from .aoti_device import describe

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    shapes = {}
    with torch.no_grad():
        for name, shape in (("prefill", (batch, input_len)), ("decode", (batch, 1))):
            ids = _prompt(vocab, *shape, device)
            engine = perf.timed(lambda ids=ids: runner(ids), sync)
            eager = perf.timed(lambda ids=ids: model(input_ids=ids, use_cache=False), sync)
            shapes[name] = perf.shape_record(shape, engine, eager)
    return perf.record(describe(device), shapes["prefill"], shapes["decode"])


def main() -> None:
    req = json.loads(Path(sys.argv[1]).read_text())
    ops = {"compile": compile_package, "validate": validate_package, "refit": refit_weights}
    if req.get("op") not in ops:
        raise SystemExit(f"unknown op {req.get('op')!r}; expected one of {', '.join(ops)}")
    result = ops[req["op"]](req)
    if req.get("result"):
        Path(req["result"]).write_text(json.dumps(result))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
