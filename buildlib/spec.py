"""models.yaml: parse, validate (file:line:field errors) and expand into model specs."""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .confine import claim, refusal
from .errors import SpecError, Where
from .gcpause import gc_paused
from .gpu import GPU_ARCHS, gpu_arch

if TYPE_CHECKING:
    from .backends.base import Backend
    from .yamldoc import YamlDoc

# Used with fullmatch (`$` alone would let a trailing newline through) and ASCII only (no Unicode digits).
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", re.ASCII)
GPU_ARCH_RE = re.compile(r"sm[0-9]{2,3}[a-z]?", re.ASCII)
CPU_ARCH_RE = re.compile(r"cpu|(x86_64|aarch64|ppc64le|s390x)(-[a-z0-9]+)?", re.ASCII)
GROUP_NAMES = frozenset({"engines", "convert", "build", "validate", "checkpoint", "default"})
DTYPES = ("float16", "bfloat16", "float32")
# models.yaml spelling -> TensorRT-LLM QuantAlgo member names.
QUANT_ALGOS = {
    "fp8": "FP8",
    "int8_sq": "W8A8_SQ_PER_CHANNEL",
    "int4_awq": "W4A16_AWQ",
    "w4a8_awq": "W4A8_AWQ",
    "nvfp4": "NVFP4",
    "int8_wo": "W8A16",
    "int4_wo": "W4A16",
}
KV_CACHE_QUANT = {"fp8": "FP8", "int8": "INT8"}
GENERATORS = {"tinyllama": ("seed", "hidden_size", "num_hidden_layers", "num_attention_heads",
                            "num_key_value_heads", "intermediate_size", "vocab_size",
                            "max_position_embeddings", "dtype")}

# Sizes that no host could build: refused while models.yaml is read, not after hours of work.
MAX_SIZE = 2**31 - 1  # any size option: TensorRT and torch.export dims are 32-bit
MAX_WORLD_SIZE = 64  # tp x pp: more GPUs than any host or NVLink domain holds for one engine
# A generated checkpoint is for demos and tests: bounded dimensions, at most ~1e9 parameters (4 GB in fp32).
MAX_GENERATED_PARAMS = 1_000_000_000
GENERATED_LIMITS = {"hidden_size": 16384, "num_hidden_layers": 256, "num_attention_heads": 256,
                    "num_key_value_heads": 256, "intermediate_size": 65536, "vocab_size": 1 << 20,
                    "max_position_embeddings": 1 << 20}
TINYLLAMA_DEFAULTS = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                      "intermediate_size": 128, "vocab_size": 256, "max_position_embeddings": 512}

TOP_KEYS = {"defaults", "models", "engines_dir", "work_dir", "store", "triton_templates", "triton_dir"}
MODEL_KEYS = {"backend", "dtype", "quantization", "archs", "parallel", "build", "gpu_name",
              "max_workers", "validate", "model_class", "trust_remote_code", "triton", "refit"}
NAMED_KEYS = {"name", "checkpoint"}


@dataclass(frozen=True)
class GeneratedCheckpoint:
    """A checkpoint produced by a doit task from a seed, e.g. the embedded tiny Llama."""

    generator: str
    params: tuple[tuple[str, Any], ...]

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.params)


@dataclass(frozen=True)
class ModelSpec:
    """One `models:` entry with defaults applied. Picklable: it travels to doit workers and Ray."""

    name: str
    checkpoint: Path | GeneratedCheckpoint
    backend: str
    dtype: str
    quantization: tuple[tuple[str, str | None], ...] | None
    archs: tuple[str, ...]
    parallel: tuple[tuple[int, int], ...]
    build: tuple[tuple[str, Any], ...]  # resolved by the backend, sorted
    gpu_name: str | None
    max_workers: int | None
    validate: bool
    model_class: str | None
    line: int | None = None
    trust_remote_code: bool = False  # allow checkpoints with custom code (auto_map) or pickle weights
    triton: tuple[tuple[str, str | int | float | bool], ...] = ()  # Triton config.pbtxt values (buildlib.triton)
    refit: bool = False  # engines built refittable; a weights-only change is refitted (buildlib.structure)

    @property
    def build_options(self) -> dict[str, Any]:
        return dict(self.build)

    def build_option(self, name: str) -> Any:
        """One build option (None if unset), without build_options' copy of all ~60: the planner asks a few per
        model on every run. The lookup dict is kept in __dict__ (frozen), never handed out."""
        got = self.__dict__.get("_build_dict")
        if got is None:
            got = self.__dict__["_build_dict"] = dict(self.build)
        return got.get(name)

    @property
    def quant(self) -> dict[str, str | None] | None:
        return dict(self.quantization) if self.quantization else None


@dataclass(frozen=True)
class Project:
    """Where things live: models.yaml, engines/, the work dir (.buildlib/), the optional store."""

    models_path: Path
    engines_dir: Path
    work_dir: Path
    store: str | None = None
    triton_templates: Path | None = None  # tensorrtllm_backend's all_models/inflight_batcher_llm (1.2.x)
    triton_dir: Path | None = None  # where `triton:` tasks write model repositories (default <root>/triton)

    @property
    def root(self) -> Path:
        return self.models_path.parent


@dataclass(frozen=True)
class Spec:
    project: Project
    models: tuple[ModelSpec, ...] = field(default_factory=tuple)

    def model(self, name: str) -> ModelSpec:
        for m in self.models:
            if m.name == name:
                return m
        raise KeyError(name)


# -- parse cache ----------------------------------------------------------------------------------------------
# A 1,000-engine models.yaml takes ~0.1-1 s to parse and validate; a no-op run must not pay that. The validated
# Spec is pickled under the work dir, keyed by: this schema, buildlib's version and recipe, the source files that
# define the option tables and validation rules (size + mtime_ns), models.yaml's path and an xxh3 of its bytes.
# On a hit, checkpoint dirs are re-checked (one stat each), so a removed dir still gets its file:line error.
SPEC_CACHE_SCHEMA = 1
SPEC_CACHE = "spec-cache.pickle"
_TOP_WORK_DIR = re.compile(r"^work_dir:[ \t]*['\"]?([^'\"#\s]+)", re.M)


def _code_fingerprint() -> list:
    from . import RECIPE_VERSION, __version__

    here = Path(__file__).parent
    out: list = [SPEC_CACHE_SCHEMA, __version__, RECIPE_VERSION]
    for name in ("spec.py", "yamldoc.py", "errors.py", "backends/__init__.py", "backends/base.py", "backends/trtllm.py",
                 "backends/trtllm_options.py", "backends/aoti.py"):
        try:
            st = os.stat(here / name)
            out.append((name, st.st_size, st.st_mtime_ns))
        except OSError:
            out.append((name, None))
    return out


def spec_cache_path(path: Path, text: str) -> Path:
    """Where the parsed spec of this models.yaml is cached: `<work_dir>/spec-cache.pickle` (work_dir read with a
    regex before parsing; a wrong guess only costs a cache miss, since the entry is keyed by the file's bytes)."""
    m = _TOP_WORK_DIR.search(text)
    return path.parent / (m.group(1) if m else ".buildlib") / SPEC_CACHE


def _cache_key(path: Path, data: bytes) -> str:
    import xxhash

    from .key import canonical_json

    return xxhash.xxh3_128_hexdigest(canonical_json([_code_fingerprint(), str(path)]).encode() + b"\0" + data)


def _cached_spec(cache: Path, key: str) -> Spec | None:
    try:
        with open(cache, "rb") as f:
            got_key, spec = pickle.load(f)
    except Exception:  # absent, truncated, from another Python: just parse
        return None
    if got_key != key or not isinstance(spec, Spec):
        return None
    for m in spec.models:
        if isinstance(m.checkpoint, Path) and not m.checkpoint.is_dir():
            return None  # re-parse: it raises the file:line error
    p = spec.project
    if any(d is not None and refusal(d, kind, p.root) for d, kind in
           ((p.engines_dir, "engines_dir"), (p.work_dir, "work_dir"), (p.triton_dir, "triton_dir"))):
        return None  # re-parse: it raises the file:line error
    return spec


def _store_spec(cache: Path, key: str, spec: Spec) -> None:
    """Atomically (temp file + rename); a failure to write only means the next run parses again."""
    tmp = cache.with_name(f".{cache.name}.{os.getpid()}.tmp")
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            pickle.dump((key, spec), f, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, cache)
    except OSError:
        tmp.unlink(missing_ok=True)


def load_spec(models_path: Path | str, use_cache: bool = True) -> Spec:
    """Read and validate models.yaml. Raises SpecError naming file, line and field.

    The validated result is cached (see SPEC_CACHE): an unchanged models.yaml costs a read, an xxh3 and an
    unpickle. Nothing is written for bad input."""
    path = Path(models_path).absolute()
    try:
        data = path.read_bytes()
        text = data.decode()
    except FileNotFoundError:
        raise SpecError("file not found (run doit where models.yaml is, or pass its path)", Where(path)) from None
    except OSError as e:
        raise SpecError(f"cannot read: {e.strerror}", Where(path)) from None
    except UnicodeDecodeError as e:
        raise SpecError(f"not valid UTF-8: {e.reason} at byte {e.start}", Where(path)) from None
    if not use_cache:
        return _parse(path, text)
    cache, key = spec_cache_path(path, text), _cache_key(path, data)
    with gc_paused():  # unpickling 1,000 models is a bulk of allocations (buildlib.gcpause)
        spec = _cached_spec(cache, key)
    if spec is None:
        spec = _parse(path, text)
        claim(spec.project.work_dir)
        _store_spec(spec.project.work_dir / SPEC_CACHE, key, spec)
    return spec


def _parse(path: Path, text: str) -> Spec:
    from .backends import get_backend  # backends import spec types; avoid an import cycle
    from .yamldoc import YamlDoc  # PyYAML is imported only when models.yaml is really parsed (not cached)

    doc = YamlDoc(path, text)
    top = doc.value
    if not isinstance(top, dict):
        raise doc.error((), "the top level must be a mapping with `models:`")
    _no_unknown(doc, (), top, TOP_KEYS)
    root = path.parent
    project = Project(
        models_path=path,
        engines_dir=root / _opt_str(doc, ("engines_dir",), top.get("engines_dir", "engines")),
        work_dir=root / _opt_str(doc, ("work_dir",), top.get("work_dir", ".buildlib")),
        store=_opt_str(doc, ("store",), top.get("store")) if top.get("store") is not None else None,
        triton_templates=_triton_templates(doc, root, top.get("triton_templates")),
        triton_dir=root / _opt_str(doc, ("triton_dir",), top.get("triton_dir", "triton")),
    )
    for kind in ("engines_dir", "work_dir", "triton_dir"):
        why = refusal(getattr(project, kind), kind, root)
        if why:
            raise doc.error((kind,), f"{getattr(project, kind)} {why}")
    defaults = top.get("defaults", {}) or {}
    if not isinstance(defaults, dict):
        raise doc.error(("defaults",), "must be a mapping")
    _no_unknown(doc, ("defaults",), defaults, MODEL_KEYS)
    entries = top.get("models")
    if not isinstance(entries, list) or not entries:
        raise doc.error(("models",), "must be a non-empty list of models")
    models: list[ModelSpec] = []
    seen: dict[str, int] = {}
    shared: dict[Any, Any] = {}  # _shared_values
    for i, entry in enumerate(entries):
        at = ("models", i)
        if not isinstance(entry, dict):
            raise doc.error(at, "each model must be a mapping with at least `name` and `checkpoint`")
        _no_unknown(doc, at, entry, MODEL_KEYS | NAMED_KEYS)
        name = _name(doc, at + ("name",), entry.get("name"))
        if name in seen:
            raise doc.error(at + ("name",), f"duplicate model name {name!r} (first at line {seen[name]})")
        seen[name] = doc.line(at) or 0
        models.append(_shared_values(_model(doc, root, defaults, entry, at, name, get_backend), shared))
    return Spec(project=project, models=tuple(models))


def _shared_values(model: ModelSpec, shared: dict[Any, Any]) -> ModelSpec:
    """The model with each tuple field that equals another model's made that same object: the parse cache then
    pickles a fleet's one build (~60 options) once, not per model (1,000 models: 458 -> 106 KB, an unpickle of
    ~14 -> ~6 ms on every run). Set in place (frozen, so through object.__setattr__): the values are equal."""
    for name in ("build", "archs", "parallel", "triton", "quantization"):
        value = getattr(model, name)
        with suppress(TypeError):  # an option whose value is a list or a dict: not shared
            object.__setattr__(model, name, shared.setdefault((name, value), value))
    return model


def _model(doc: YamlDoc, root: Path, defaults: dict, entry: dict, where: tuple, name: str,
           get_backend: Callable[[str], Backend]) -> ModelSpec:
    """Validate one model entry; each field is looked up in the entry, then in `defaults:`."""
    m = {**defaults, **entry}

    def at(key: str) -> tuple:
        return (where if key in entry else ("defaults",)) + (key,)

    if "checkpoint" not in m:
        raise doc.error(where + ("checkpoint",), "missing; give the Hugging Face checkpoint dir")
    checkpoint = _checkpoint(doc, root, at("checkpoint"), m["checkpoint"])
    backend_name = m.get("backend", "trtllm")
    if not isinstance(backend_name, str):
        raise doc.error(at("backend"), f"must be a backend name (trtllm, aoti); got {backend_name!r}")
    try:
        backend = get_backend(backend_name)
    except KeyError as e:
        raise doc.error(at("backend"), str(e.args[0])) from None
    dtype = m.get("dtype", "float16")
    if dtype not in DTYPES:
        raise doc.error(at("dtype"), f"must be one of {', '.join(DTYPES)}; got {dtype!r}")
    archs = m.get("archs", ["sm90"])
    if not isinstance(archs, list) or not archs:
        raise doc.error(at("archs"), "must be a non-empty list such as [sm80, sm90]")
    archs = [_arch(doc, at("archs") + (j,), a) for j, a in enumerate(archs)]
    if len(set(archs)) != len(archs):
        twice = next(a for a in archs if archs.count(a) > 1)
        raise doc.error(at("archs"), f"lists {twice} twice (a GPU name stands for its arch: h100 is sm90)")
    parallel = _parallel(doc, at("parallel"), m.get("parallel", [{"tp": 1, "pp": 1}]))
    for part in (defaults, entry):
        if not isinstance(part.get("build", {}) or {}, dict):
            raise doc.error(at("build"), "must be a mapping of build options")
    # Per-key override: a model's `build:` refines the defaults' `build:`.
    build_raw = {**(defaults.get("build") or {}), **(entry.get("build") or {})}
    refit = m.get("refit", False)
    if not isinstance(refit, bool):
        raise doc.error(at("refit"), f"must be true or false; got {refit!r}")
    try:
        build = backend.resolve_build(build_raw)
        if refit:
            build = backend.resolve_refit(build, build_raw)
    except SpecError as e:
        key = e.field or ""
        src = where if key in (entry.get("build") or {}) else ("defaults",)
        raise doc.error(src + ("build",) + ((key,) if key in build_raw else ()), e.message) from None
    quant = _quant(doc, at("quantization"), m.get("quantization"))
    gpu_name = m.get("gpu_name")
    if gpu_name is not None and (not isinstance(gpu_name, str) or not gpu_name.strip()):
        raise doc.error(at("gpu_name"), "must be a GPU name as nvidia-smi prints it, e.g. 'NVIDIA H100 80GB HBM3'")
    max_workers = m.get("max_workers")
    if max_workers is not None and (not _is_int(max_workers) or max_workers < 1):
        raise doc.error(at("max_workers"), f"must be an integer >= 1; got {max_workers!r}")
    validate = m.get("validate", True)
    if not isinstance(validate, bool):
        raise doc.error(at("validate"), f"must be true or false; got {validate!r}")
    trust = m.get("trust_remote_code", False)
    if not isinstance(trust, bool):
        raise doc.error(at("trust_remote_code"), f"must be true or false; got {trust!r}")
    triton = m.get("triton") or {}
    if isinstance(triton, dict) and isinstance(defaults.get("triton"), dict):
        triton = {**defaults["triton"], **triton}  # per-placeholder: a model overrides what defaults set
    if not isinstance(triton, dict) or not all(isinstance(k, str) and isinstance(v, str | int | float | bool)
                                                and not (isinstance(v, str) and CONTROL_RE.search(v))
                                                for k, v in triton.items()):
        raise doc.error(at("triton"), "must map config.pbtxt placeholders to values, e.g. "
                        "{kv_cache_free_gpu_mem_fraction: 0.9, decoupled_mode: true}")
    model_class = m.get("model_class")
    if model_class is not None and (not isinstance(model_class, str) or not model_class.isidentifier()):
        raise doc.error(at("model_class"), f"must be a class name like LlamaForCausalLM; got {model_class!r}")
    spec = ModelSpec(
        name=name, checkpoint=checkpoint, backend=backend_name, dtype=dtype,
        quantization=tuple(sorted(quant.items())) if quant else None,
        archs=tuple(archs), parallel=parallel, build=tuple(sorted(build.items())),
        gpu_name=gpu_name, max_workers=max_workers, validate=validate,
        model_class=model_class, line=doc.line(at("name")[:-1]), trust_remote_code=trust,
        triton=tuple(sorted(triton.items())), refit=refit,
    )
    try:
        backend.check_model(spec)
    except SpecError as e:
        parts = tuple((e.field or "backend").split("."))
        in_defaults = _has(defaults, parts) and not _has(entry, parts)
        raise doc.error((("defaults",) if in_defaults else where) + parts, e.message) from None
    return spec


def _has(d: Any, parts: tuple[str, ...]) -> bool:
    """Whether the nested mapping d holds the path parts (e.g. ("build", "kv_cache_type"))."""
    for p in parts:
        if not isinstance(d, dict) or p not in d:
            return False
        d = d[p]
    return True


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _no_unknown(doc: YamlDoc, at: tuple, d: dict, allowed: set[str]) -> None:
    import difflib

    for k in d:
        if k not in allowed:
            close = difflib.get_close_matches(k, sorted(allowed), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; allowed: {', '.join(sorted(allowed))}"
            raise doc.error(at + (k,), f"unknown key{hint}")


CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


def _opt_str(doc: YamlDoc, at: tuple, v: Any) -> str:
    """A non-empty path or URL string, without control characters (a NUL cannot be in a path)."""
    if not isinstance(v, str) or not v:
        raise doc.error(at, f"must be a non-empty string; got {v!r}")
    if CONTROL_RE.search(v):
        raise doc.error(at, f"must not contain control characters; got {v!r}")
    return v


def _name(doc: YamlDoc, at: tuple, v: Any) -> str:
    if v is None:
        raise doc.error(at, "missing; every model needs a name")
    if not isinstance(v, str) or not NAME_RE.fullmatch(v) or ".." in v:
        raise doc.error(at, f"{v!r} is not a safe name: use letters, digits, '.', '_', '-' (no '/', no '..')")
    if v in GROUP_NAMES or GPU_ARCH_RE.fullmatch(v) or CPU_ARCH_RE.fullmatch(v):
        raise doc.error(at, f"{v!r} is reserved (it names a task group or an arch)")
    return v


def _checkpoint(doc: YamlDoc, root: Path, at: tuple, v: Any) -> Path | GeneratedCheckpoint:
    if isinstance(v, dict):
        gen = v.get("generate")
        if not (isinstance(gen, str) and gen in GENERATORS):
            raise doc.error(at + ("generate",), f"must be one of {', '.join(GENERATORS)}; got {gen!r}")
        params = {k: x for k, x in v.items() if k != "generate"}
        _no_unknown(doc, at, params, set(GENERATORS[gen]))
        for k, x in params.items():
            if k == "dtype":
                if x not in DTYPES:
                    raise doc.error(at + (k,), f"must be one of {', '.join(DTYPES)}")
            elif k == "seed":
                if not _is_int(x) or x < 0:
                    raise doc.error(at + (k,), f"must be a non-negative integer; got {x!r}")
            elif not _is_int(x) or not 1 <= x <= GENERATED_LIMITS[k]:
                raise doc.error(at + (k,), f"must be an integer from 1 to {GENERATED_LIMITS[k]:,}; got {x!r}")
        _check_generated(doc, at, {**TINYLLAMA_DEFAULTS, **{k: x for k, x in params.items() if k in GENERATED_LIMITS}})
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


def _arch(doc: YamlDoc, at: tuple, a: Any) -> str:
    """One rule for arch names: an SM arch NVIDIA ships, a GPU product name (its SM arch), or a CPU ISA."""
    gpu = gpu_arch(a) if isinstance(a, str) else None
    if gpu is not None:
        return gpu
    if isinstance(a, str) and CPU_ARCH_RE.fullmatch(a):
        return a
    raise doc.error(at, f"{a!r} is not an arch: an SM arch ({', '.join(GPU_ARCHS)}), a GPU name that stands for "
                    "one (h100, a100, l40s, b200, ...), or cpu (this host's ISA, e.g. x86_64-avx512)")


def _triton_templates(doc: YamlDoc, root: Path, v: Any) -> Path | None:
    """tensorrtllm_backend's `all_models/inflight_batcher_llm` of the 1.2.x release: the 5 model dirs."""
    if v is None:
        return None
    p = (root / _opt_str(doc, ("triton_templates",), v)).absolute()
    from .triton import MODELS

    missing = [m for m in MODELS if not (p / m / "config.pbtxt").is_file()]
    if missing:
        raise doc.error(("triton_templates",), f"{p} is not tensorrtllm_backend's all_models/inflight_batcher_llm "
                        f"(no {', '.join(f'{m}/config.pbtxt' for m in missing)}); point it at that dir of the "
                        "release matching TensorRT-LLM 1.2.x (triton_backend/ in its repository)")
    return p


def _check_generated(doc: YamlDoc, at: tuple, d: dict[str, int]) -> None:
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


def _parallel(doc: YamlDoc, at: tuple, v: Any) -> tuple[tuple[int, int], ...]:
    if not isinstance(v, list) or not v:
        raise doc.error(at, "must be a non-empty list such as [{tp: 1, pp: 1}, {tp: 2, pp: 1}]")
    out: list[tuple[int, int]] = []
    for j, p in enumerate(v):
        if not isinstance(p, dict):
            raise doc.error(at + (j,), "must be a mapping like {tp: 2, pp: 1}")
        _no_unknown(doc, at + (j,), p, {"tp", "pp"})
        tp, pp = p.get("tp", 1), p.get("pp", 1)
        for k, x in (("tp", tp), ("pp", pp)):
            if not _is_int(x) or x < 1:
                raise doc.error(at + (j, k), f"must be an integer >= 1; got {x!r}")
        if tp * pp > MAX_WORLD_SIZE:
            raise doc.error(at + (j,), f"tp{tp}-pp{pp} needs {tp * pp} GPUs for one engine; no host holds more than "
                            f"{MAX_WORLD_SIZE}")
        if (tp, pp) in out:
            raise doc.error(at + (j,), f"tp{tp}-pp{pp} is listed twice")
        out.append((tp, pp))
    return tuple(out)


def _quant(doc: YamlDoc, at: tuple, v: Any) -> dict[str, str | None] | None:
    if v is None:
        return None
    if isinstance(v, str):
        v = {"algo": v}
    if not isinstance(v, dict):
        raise doc.error(at, "must be null, an algorithm name, or {algo: fp8, kv_cache: fp8}")
    _no_unknown(doc, at, v, {"algo", "kv_cache"})
    algo, kv = v.get("algo"), v.get("kv_cache")
    if algo is not None and not (isinstance(algo, str) and algo in QUANT_ALGOS):
        raise doc.error(at + ("algo",), f"must be one of {', '.join(QUANT_ALGOS)}; got {algo!r}")
    if kv is not None and not (isinstance(kv, str) and kv in KV_CACHE_QUANT):
        raise doc.error(at + ("kv_cache",), f"must be one of {', '.join(KV_CACHE_QUANT)}; got {kv!r}")
    if algo is None and kv is None:
        return None
    return {"algo": QUANT_ALGOS[algo] if algo else None, "kv_cache": KV_CACHE_QUANT[kv] if kv else None}
