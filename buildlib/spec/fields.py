"""The field checks of models.yaml: one value each, checked where it stands, with file:line:field errors."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core.model import (
    CONTROL_RE,
    CPU_ARCH_RE,
    DTYPES,
    GENERATED_LIMITS,
    GENERATORS,
    GPU_ARCH_RE,
    GROUP_NAMES,
    KV_CACHE_QUANT,
    MAX_GENERATED_PARAMS,
    MAX_WORLD_SIZE,
    NAME_RE,
    QUANT_ALGOS,
    TINYLLAMA_DEFAULTS,
    TRITON_MODELS,
    GeneratedCheckpoint,
    StoreSpec,
)
from ..host.gpu import GPU_ARCHS, gpu_arch

if TYPE_CHECKING:
    from .yamldoc import YamlDoc


def has(d: Any, parts: tuple[str, ...]) -> bool:
    """Whether the nested mapping d holds the path parts (e.g. ("build", "kv_cache_type"))."""
    for p in parts:
        if not isinstance(d, dict) or p not in d:
            return False
        d = d[p]
    return True


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def no_unknown(doc: YamlDoc, at: tuple, d: dict, allowed: set[str]) -> None:
    for k in d:
        if k not in allowed:
            close = difflib.get_close_matches(k, sorted(allowed), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; allowed: {', '.join(sorted(allowed))}"
            raise doc.error(at + (k,), f"unknown key{hint}")




def opt_str(doc: YamlDoc, at: tuple, v: Any) -> str:
    """A non-empty path or URL string, without control characters (a NUL cannot be in a path)."""
    if not isinstance(v, str) or not v:
        raise doc.error(at, f"must be a non-empty string; got {v!r}")
    if CONTROL_RE.search(v):
        raise doc.error(at, f"must not contain control characters; got {v!r}")
    return v


def name(doc: YamlDoc, at: tuple, v: Any) -> str:
    if v is None:
        raise doc.error(at, "missing; every model needs a name")
    if not isinstance(v, str) or not NAME_RE.fullmatch(v) or ".." in v:
        raise doc.error(at, f"{v!r} is not a safe name: use letters, digits, '.', '_', '-' (no '/', no '..')")
    if v in GROUP_NAMES or GPU_ARCH_RE.fullmatch(v) or CPU_ARCH_RE.fullmatch(v):
        raise doc.error(at, f"{v!r} is reserved (it names a task group or an arch)")
    return v


def checkpoint(doc: YamlDoc, root: Path, at: tuple, v: Any) -> Path | GeneratedCheckpoint:
    if isinstance(v, dict):
        gen = v.get("generate")
        if not (isinstance(gen, str) and gen in GENERATORS):
            raise doc.error(at + ("generate",), f"must be one of {', '.join(GENERATORS)}; got {gen!r}")
        params = {k: x for k, x in v.items() if k != "generate"}
        no_unknown(doc, at, params, set(GENERATORS[gen]))
        for k, x in params.items():
            if k == "dtype":
                if x not in DTYPES:
                    raise doc.error(at + (k,), f"must be one of {', '.join(DTYPES)}")
            elif k == "seed":
                if not is_int(x) or x < 0:
                    raise doc.error(at + (k,), f"must be a non-negative integer; got {x!r}")
            elif not is_int(x) or not 1 <= x <= GENERATED_LIMITS[k]:
                raise doc.error(at + (k,), f"must be an integer from 1 to {GENERATED_LIMITS[k]:,}; got {x!r}")
        check_generated(doc, at, {**TINYLLAMA_DEFAULTS, **{k: x for k, x in params.items() if k in GENERATED_LIMITS}})
        return GeneratedCheckpoint(gen, tuple(sorted(params.items())))
    if not isinstance(v, str) or not v or CONTROL_RE.search(v):
        raise doc.error(at, "must be a path to a Hugging Face checkpoint dir (no control characters), or "
                        "{generate: tinyllama, seed: N}")
    p = (root / v).absolute()
    if p.is_dir():
        return p
    if p.exists():
        raise doc.error(at, f"checkpoint {v!r} is a file, not a checkpoint dir (resolved to {p}): point it at the "
                        "Hugging Face dir that holds config.json and the *.safetensors shards")
    raise doc.error(at, f"checkpoint dir {v!r} does not exist (resolved to {p}): put the checkpoint there "
                    "or fix the path (relative paths are to this file's dir)")


def arch(doc: YamlDoc, at: tuple, a: Any) -> str:
    """One rule for arch names: an SM arch NVIDIA ships, a GPU product name (its SM arch), or a CPU ISA."""
    gpu = gpu_arch(a) if isinstance(a, str) else None
    if gpu is not None:
        return gpu
    if isinstance(a, str) and CPU_ARCH_RE.fullmatch(a):
        return a
    raise doc.error(at, f"{a!r} is not an arch: an SM arch ({', '.join(GPU_ARCHS)}), a GPU name that stands for "
                    "one (h100, a100, l40s, b200, ...), or cpu (this host's ISA, e.g. x86_64-avx512)")


def triton_templates(doc: YamlDoc, root: Path, v: Any) -> Path | None:
    """tensorrtllm_backend's `all_models/inflight_batcher_llm` of the 1.2.x release: the 5 model dirs."""
    if v is None:
        return None
    p = (root / opt_str(doc, ("triton_templates",), v)).absolute()
    missing = [m for m in TRITON_MODELS if not (p / m / "config.pbtxt").is_file()]
    if missing:
        raise doc.error(("triton_templates",), f"{p} is not tensorrtllm_backend's all_models/inflight_batcher_llm "
                        f"(no {', '.join(f'{m}/config.pbtxt' for m in missing)}); point it at that dir of the "
                        "release matching TensorRT-LLM 1.2.x (triton_backend/ in its repository)")
    return p


def check_generated(doc: YamlDoc, at: tuple, d: dict[str, int]) -> None:
    """A Llama shape that transformers can build, and small enough to write."""
    heads, kv, hidden = d["num_attention_heads"], d["num_key_value_heads"], d["hidden_size"]
    if hidden % heads:
        raise doc.error(at + ("num_attention_heads",), f"must divide hidden_size ({hidden}); got {heads}")
    if heads % kv:
        raise doc.error(at + ("num_key_value_heads",), f"must divide num_attention_heads ({heads}); got {kv}")
    kv_dim = hidden // heads * kv
    per_layer = 2 * hidden * hidden + 2 * hidden * kv_dim + 3 * hidden * d["intermediate_size"] + 2 * hidden
    params = 2 * d["vocab_size"] * hidden + d["num_hidden_layers"] * per_layer
    if params > MAX_GENERATED_PARAMS:
        raise doc.error(at, f"would have {params:,} parameters; a generated checkpoint is for demos and tests "
                        f"(at most {MAX_GENERATED_PARAMS:,}): use a real checkpoint dir")


def parallel(doc: YamlDoc, at: tuple, v: Any) -> tuple[tuple[int, int], ...]:
    if not isinstance(v, list) or not v:
        raise doc.error(at, "must be a non-empty list such as [{tp: 1, pp: 1}, {tp: 2, pp: 1}]")
    out: list[tuple[int, int]] = []
    for j, p in enumerate(v):
        if not isinstance(p, dict):
            raise doc.error(at + (j,), "must be a mapping like {tp: 2, pp: 1}")
        no_unknown(doc, at + (j,), p, {"tp", "pp"})
        tp, pp = p.get("tp", 1), p.get("pp", 1)
        for k, x in (("tp", tp), ("pp", pp)):
            if not is_int(x) or x < 1:
                raise doc.error(at + (j, k), f"must be an integer >= 1; got {x!r}")
        if tp * pp > MAX_WORLD_SIZE:
            raise doc.error(at + (j,), f"tp{tp}-pp{pp} needs {tp * pp} GPUs for one engine; no host holds more than "
                            f"{MAX_WORLD_SIZE}")
        if (tp, pp) in out:
            raise doc.error(at + (j,), f"tp{tp}-pp{pp} is listed twice")
        out.append((tp, pp))
    return tuple(out)


def quant(doc: YamlDoc, at: tuple, v: Any) -> dict[str, str | None] | None:
    if v is None:
        return None
    if isinstance(v, str):
        v = {"algo": v}
    if not isinstance(v, dict):
        raise doc.error(at, "must be null, an algorithm name, or {algo: fp8, kv_cache: fp8}")
    no_unknown(doc, at, v, {"algo", "kv_cache"})
    algo, kv = v.get("algo"), v.get("kv_cache")
    if algo is not None and not (isinstance(algo, str) and algo in QUANT_ALGOS):
        raise doc.error(at + ("algo",), f"must be one of {', '.join(QUANT_ALGOS)}; got {algo!r}")
    if kv is not None and not (isinstance(kv, str) and kv in KV_CACHE_QUANT):
        raise doc.error(at + ("kv_cache",), f"must be one of {', '.join(KV_CACHE_QUANT)}; got {kv!r}")
    if algo is None and kv is None:
        return None
    return {"algo": QUANT_ALGOS[algo] if algo else None, "kv_cache": KV_CACHE_QUANT[kv] if kv else None}


def _key_file(doc: YamlDoc, root: Path, at: tuple, v: Any) -> str:
    """A key or certificate file named in `store:` (relative to models.yaml), that exists."""
    p = (root / opt_str(doc, at, v)).absolute()
    if not p.is_file():
        raise doc.error(at, f"{v!r} is not a file (resolved to {p}): give the PEM file's path, relative to this file")
    return str(p)


def store(doc: YamlDoc, root: Path, v: Any) -> StoreSpec | None:
    """`store: URL`, or {url, push, sign, trust} (buildlib.core.model.StoreSpec)."""
    at = ("store",)
    if v is None:
        return None
    if isinstance(v, str):
        return StoreSpec(opt_str(doc, at, v))
    if not isinstance(v, dict):
        raise doc.error(at, "must be a URL (a dir, file:///path or s3://bucket/prefix) or {url: ..., push: false, "
                        "sign: {key: PATH}, trust: [PATH, ...]}")
    no_unknown(doc, at, v, {"url", "push", "sign", "trust"})
    if "url" not in v:
        raise doc.error(at, "needs `url:` (a dir, file:///path or s3://bucket/prefix)")
    push = v.get("push", True)
    if not isinstance(push, bool):
        raise doc.error(at + ("push",), f"must be true or false; got {push!r}")
    return StoreSpec(opt_str(doc, at + ("url",), v["url"]), push, _sign(doc, root, v.get("sign")),
                     _trust(doc, root, v.get("trust")))


def _sign(doc: YamlDoc, root: Path, v: Any) -> tuple[tuple[str, str], ...]:
    at = ("store", "sign")
    if v is None:
        return ()
    if not isinstance(v, dict):
        raise doc.error(at, "must be {key: PATH} (an EC private key), {certificate: PATH, key: PATH, chain: [PATH]} "
                        "or {sigstore: true}")
    no_unknown(doc, at, v, {"key", "certificate", "chain", "sigstore"})
    if v.get("sigstore") is not None:
        if v["sigstore"] is not True or len(v) != 1:
            raise doc.error(at + ("sigstore",), "must be true, alone (keyless signing with the CI's OIDC identity)")
        return (("sigstore", "ambient"),)
    if "key" not in v:
        raise doc.error(at, "needs `key:` (an EC private key in PEM), or `sigstore: true`")
    out = [("key", _key_file(doc, root, at + ("key",), v["key"]))]
    if "certificate" in v:
        out.append(("certificate", _key_file(doc, root, at + ("certificate",), v["certificate"])))
        chain = v.get("chain") or []
        if not isinstance(chain, list):
            raise doc.error(at + ("chain",), "must be a list of PEM files")
        out += [("chain", _key_file(doc, root, at + ("chain", i), c)) for i, c in enumerate(chain)]
    elif "chain" in v:
        raise doc.error(at + ("chain",), "goes with `certificate:`")
    return tuple(out)


def _trust(doc: YamlDoc, root: Path, v: Any) -> tuple[tuple[tuple[str, str], ...], ...]:
    at = ("store", "trust")
    if v is None:
        return ()
    if not isinstance(v, list) or not v:
        raise doc.error(at, "must be a non-empty list: public key files (PEM), {certificate_chain: [PATH]} or "
                        "{sigstore: {identity: ..., issuer: ...}}")
    out = []
    for i, t in enumerate(v):
        here = at + (i,)
        if isinstance(t, str):
            out.append((("key", _key_file(doc, root, here, t)),))
        elif isinstance(t, dict) and set(t) == {"certificate_chain"} and isinstance(t["certificate_chain"], list):
            out.append(tuple(("certificate_chain", _key_file(doc, root, here + ("certificate_chain", j), c))
                             for j, c in enumerate(t["certificate_chain"])))
        elif isinstance(t, dict) and set(t) == {"sigstore"} and isinstance(t["sigstore"], dict):
            no_unknown(doc, here + ("sigstore",), t["sigstore"], {"identity", "issuer"})
            ident = opt_str(doc, here + ("sigstore", "identity"), t["sigstore"].get("identity"))
            issuer = opt_str(doc, here + ("sigstore", "issuer"), t["sigstore"].get("issuer"))
            out.append((("sigstore_identity", ident), ("sigstore_issuer", issuer)))
        else:
            raise doc.error(here, "must be a public key file (PEM), {certificate_chain: [PATH]} or "
                            "{sigstore: {identity: ..., issuer: ...}}")
    return tuple(out)
