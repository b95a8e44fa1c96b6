"""models.yaml in: read, validate (file:line:field errors) and expand into model specs, cached.

The field checks are in buildlib.spec.fields, the YAML reader with line numbers in buildlib.spec.yamldoc; each
backend's options are resolved and refused by its Recipe (buildlib.backends.recipe).
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import re
from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core.errors import SpecError, Where
from ..core.gcpause import gc_paused
from ..core.layout import SPEC_CACHE
from ..core.model import CONTROL_RE, DTYPES, MODEL_KEYS, NAMED_KEYS, TOP_KEYS, ModelSpec, Project, Spec
from ..host.confine import claim, refusal

if TYPE_CHECKING:
    from .yamldoc import YamlDoc

# -- parse cache ----------------------------------------------------------------------------------------------
# A 1,000-engine models.yaml takes ~0.1-1 s to parse and validate; a no-op run must not pay that. The validated
# Spec is pickled under the work dir, keyed by: this schema, buildlib's version and recipe, the source files that
# define the option tables and validation rules (size + mtime_ns), models.yaml's path and an xxh3 of its bytes.
# On a hit, checkpoint dirs are re-checked (one stat each), so a removed dir still gets its file:line error.
SPEC_CACHE_SCHEMA = 1
_TOP_WORK_DIR = re.compile(r"^work_dir:[ \t]*['\"]?([^'\"#\s]+)", re.M)


# The modules whose code decides what a models.yaml parses to: a change to any of them invalidates the cache.
CODE = ("spec/load.py", "spec/fields.py", "spec/yamldoc.py", "core/errors.py", "core/model.py", "backends/registry.py",
        "backends/recipe.py", "backends/trtllm_recipe.py", "backends/trtllm_options.py", "backends/aoti_recipe.py")


def _code_fingerprint() -> list:
    from .. import RECIPE_VERSION, __version__

    here = Path(__file__).parent.parent
    out: list = [SPEC_CACHE_SCHEMA, __version__, RECIPE_VERSION]
    for name in CODE:
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

    from ..core.key import canonical_json

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
    # Imported only when models.yaml is really parsed (not cached): PyYAML, difflib, the backends' option tables.
    from . import fields as f
    from .yamldoc import YamlDoc

    doc = YamlDoc(path, text)
    top = doc.value
    if not isinstance(top, dict):
        raise doc.error((), "the top level must be a mapping with `models:`")
    f.no_unknown(doc, (), top, TOP_KEYS)
    root = path.parent
    project = Project(
        models_path=path,
        engines_dir=root / f.opt_str(doc, ("engines_dir",), top.get("engines_dir", "engines")),
        work_dir=root / f.opt_str(doc, ("work_dir",), top.get("work_dir", ".buildlib")),
        store=f.store(doc, root, top.get("store")),
        triton_templates=f.triton_templates(doc, root, top.get("triton_templates")),
        triton_dir=root / f.opt_str(doc, ("triton_dir",), top.get("triton_dir", "triton")),
    )
    for kind in ("engines_dir", "work_dir", "triton_dir"):
        why = refusal(getattr(project, kind), kind, root)
        if why:
            raise doc.error((kind,), f"{getattr(project, kind)} {why}")
    defaults = top.get("defaults", {}) or {}
    if not isinstance(defaults, dict):
        raise doc.error(("defaults",), "must be a mapping")
    f.no_unknown(doc, ("defaults",), defaults, MODEL_KEYS)
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
        f.no_unknown(doc, at, entry, MODEL_KEYS | NAMED_KEYS)
        name = f.name(doc, at + ("name",), entry.get("name"))
        if name in seen:
            raise doc.error(at + ("name",), f"duplicate model name {name!r} (first at line {seen[name]})")
        seen[name] = doc.line(at) or 0
        models.append(_shared_values(_model(doc, root, defaults, entry, at, name), shared))
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


def _model(doc: YamlDoc, root: Path, defaults: dict, entry: dict, where: tuple, name: str) -> ModelSpec:
    """Validate one model entry; each field is looked up in the entry, then in `defaults:`. The backend's Recipe
    resolves its build options (every default filled) and refuses what it cannot build."""
    from ..backends.registry import recipe
    from . import fields as f

    m = {**defaults, **entry}

    def at(key: str) -> tuple:
        return (where if key in entry else ("defaults",)) + (key,)

    if "checkpoint" not in m:
        raise doc.error(where + ("checkpoint",), "missing; give the Hugging Face checkpoint dir")
    checkpoint = f.checkpoint(doc, root, at("checkpoint"), m["checkpoint"])
    backend_name = m.get("backend", "trtllm")
    if not isinstance(backend_name, str):
        raise doc.error(at("backend"), f"must be a backend name (trtllm, aoti); got {backend_name!r}")
    try:
        backend = recipe(backend_name)
    except KeyError as e:
        raise doc.error(at("backend"), str(e.args[0])) from None
    dtype = m.get("dtype", "float16")
    if dtype not in DTYPES:
        raise doc.error(at("dtype"), f"must be one of {', '.join(DTYPES)}; got {dtype!r}")
    archs = m.get("archs", ["sm90"])
    if not isinstance(archs, list) or not archs:
        raise doc.error(at("archs"), "must be a non-empty list such as [sm80, sm90]")
    archs = [f.arch(doc, at("archs") + (j,), a) for j, a in enumerate(archs)]
    if len(set(archs)) != len(archs):
        twice = next(a for a in archs if archs.count(a) > 1)
        raise doc.error(at("archs"), f"lists {twice} twice (a GPU name stands for its arch: h100 is sm90)")
    parallel = f.parallel(doc, at("parallel"), m.get("parallel", [{"tp": 1, "pp": 1}]))
    for part in (defaults, entry):
        if not isinstance(part.get("build", {}) or {}, dict):
            raise doc.error(at("build"), "must be a mapping of build options")
    # Per-key override: a model's `build:` refines the defaults' `build:`.
    build_raw = {**(defaults.get("build") or {}), **(entry.get("build") or {})}
    refit = m.get("refit", False)
    if not isinstance(refit, bool):
        raise doc.error(at("refit"), f"must be true or false; got {refit!r}")
    quant = f.quant(doc, at("quantization"), m.get("quantization"))
    gpu_name = m.get("gpu_name")
    if gpu_name is not None and (not isinstance(gpu_name, str) or not gpu_name.strip()):
        raise doc.error(at("gpu_name"), "must be a GPU name as nvidia-smi prints it, e.g. 'NVIDIA H100 80GB HBM3'")
    max_workers = m.get("max_workers")
    if max_workers is not None and (not f.is_int(max_workers) or max_workers < 1):
        raise doc.error(at("max_workers"), f"must be an integer >= 1; got {max_workers!r}")
    validate = m.get("validate", True)
    if not isinstance(validate, bool):
        raise doc.error(at("validate"), f"must be true or false; got {validate!r}")
    perf_gate = m.get("perf_gate")
    if perf_gate is not None and (isinstance(perf_gate, bool) or not isinstance(perf_gate, int | float)
                                  or not 0 < perf_gate <= 1):
        raise doc.error(at("perf_gate"), "must be a fraction in (0, 1], e.g. 0.95: a rebuilt engine slower than "
                        f"that share of the engine it replaces is reported regressed; got {perf_gate!r}")
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
    given = ModelSpec(  # build: what models.yaml set, resolved below
        name=name, checkpoint=checkpoint, backend=backend_name, dtype=dtype,
        quantization=tuple(sorted(quant.items())) if quant else None,
        archs=tuple(archs), parallel=parallel, build=tuple(sorted(build_raw.items())),
        gpu_name=gpu_name, max_workers=max_workers, validate=validate,
        model_class=model_class, line=doc.line(at("name")[:-1]), trust_remote_code=trust,
        triton=tuple(sorted(triton.items())), refit=refit,
        perf_gate=float(perf_gate) if perf_gate is not None else None,
    )
    try:
        build = backend.resolve(given)
    except SpecError as e:
        raise doc.error(_locate(entry, defaults, where, tuple((e.field or "backend").split("."))), e.message) from None
    return dataclasses.replace(given, build=tuple(sorted(build.items())))


def _locate(entry: dict, defaults: dict, where: tuple, parts: tuple[str, ...]) -> tuple:
    """Where in models.yaml a field of a model (`build.max_batch_size`) is set: the model's entry, else `defaults:`,
    for the longest part of the path either sets (so an option a default filled points at the `build:` it is
    missing from); the model's entry when neither sets any of it."""
    from . import fields as f

    for n in range(len(parts), 0, -1):
        if f.has(entry, parts[:n]):
            return where + parts[:n]
        if f.has(defaults, parts[:n]):
            return ("defaults", *parts[:n])
    return where + parts
