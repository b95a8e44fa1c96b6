"""Hostile models.yaml (issue #11): property-based fuzzing of mutated valid files, plus hand-written nasties.

Every input must end as a valid plan or as one UserError (what the CLI prints as one `error:` line with
exit status 2), within a time bound, writing nothing outside the project. The same functions the CLI
calls are called in-process (thousands of inputs in well under two minutes); one CLI round trip per
nasty proves the exit status and the single line.
"""

from __future__ import annotations

import os
import time
from datetime import timedelta
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from buildlib.core.errors import UserError
from buildlib.host.gpu import Host
from buildlib.plan.planner import Planner
from buildlib.spec.load import load_spec
from tests.conftest import LOADER_PYPROJECT, doit, write_hf_checkpoint

VALID = [
    """\
defaults:
  backend: trtllm
  dtype: float16
  archs: [sm90]
  build: {max_batch_size: 8, max_input_len: 16, max_seq_len: 32}
models:
  - name: llama
    checkpoint: ckpt
    archs: [sm80, sm90]
    parallel: [{tp: 1, pp: 1}, {tp: 2, pp: 1}]
    quantization: {algo: fp8, kv_cache: fp8}
    build: {max_batch_size: 64, gemm_plugin: auto, lora_target_modules: [attn_q]}
  - name: tiny
    checkpoint: {generate: tinyllama, seed: 1, hidden_size: 32, num_attention_heads: 4}
    backend: aoti
    archs: [cpu]
    build: {max_batch_size: 2, max_input_len: 16, max_seq_len: 32}
""",
    """\
engines_dir: out/engines
work_dir: out/work
models:
  - name: m
    checkpoint: ckpt
    gpu_name: NVIDIA H100 80GB HBM3
    max_workers: 2
    validate: false
    build: {kv_cache_type: paged, use_paged_context_fmha: enable, max_draft_len: 0}
""",
]
NASTIES = {
    "alias bomb": "a: &a [x,x,x,x,x,x,x,x,x]\n" + "".join(
        f"{c}: &{c} [{', '.join([f'*{p}'] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi", strict=True)),
    "recursive alias": "models: &m [*m]\n",
    "merge key": "d: &d {backend: aoti}\nmodels:\n  - <<: *d\n    name: m\n    checkpoint: ckpt\n",
    "deep nesting": "models: " + "[" * 5000 + "]" * 5000 + "\n",
    "deep mapping": "models: " + "{a: " * 3000 + "1" + "}" * 3000 + "\n",
    "huge number": "models:\n  - name: m\n    checkpoint: ckpt\n    build: {max_batch_size: " + "9" * 6000 + "}\n",
    "big int": "models:\n  - name: m\n    checkpoint: ckpt\n    build: {max_batch_size: 99999999999999999999}\n",
    "nul byte": "models:\n  - name: m\x00\n    checkpoint: ckpt\n",
    "non-utf8": b"models:\n  - name: \xff\xfe\n    checkpoint: ckpt\n",
    "python tag": "models:\n  - name: !!python/object/apply:os.system [echo pwned]\n    checkpoint: ckpt\n",
    "world size": "models:\n  - name: m\n    checkpoint: ckpt\n    parallel: [{tp: 4096, pp: 4096}]\n",
    "absurd generator": "models:\n  - name: m\n    backend: aoti\n    archs: [cpu]\n"
                        "    checkpoint: {generate: tinyllama, hidden_size: 16384, num_hidden_layers: 256}\n",
    "traversal name": "models:\n  - name: ../../etc\n    checkpoint: ckpt\n",
    "control char name": "models:\n  - name: \"a\\tb\"\n    checkpoint: ckpt\n",
    "trailing newline name": "models:\n  - name: \"m\\n\"\n    checkpoint: ckpt\n",
    "unicode digits arch": "models:\n  - name: m\n    checkpoint: ckpt\n    archs: [sm\u0669\u0660]\n",
    "NUL in a path": "engines_dir: \"a\\0b\"\nmodels:\n  - name: m\n    checkpoint: ckpt\n",
    "work_dir root": "work_dir: /\nmodels:\n  - name: m\n    checkpoint: ckpt\n",
    "engines in etc": "engines_dir: /etc/engines\nmodels:\n  - name: m\n    checkpoint: ckpt\n",
    "checkpoint is a file": "models:\n  - name: m\n    checkpoint: ckpt/config.json\n",
    "empty": "",
    "scalar top": "42\n",
    "tabs": "models:\n\t- name: m\n",
}


def project(tmp: Path) -> Path:
    root = tmp / "proj"
    if not (root / "ckpt").is_dir():
        write_hf_checkpoint(root / "ckpt", shards=1, seed=2)
        (root / "pyproject.toml").write_text(LOADER_PYPROJECT)
    return root


# What buildlib writes: watched for at the top of / and /tmp (other processes' scratch comes and goes there).
_OURS = {"statcache.sqlite", "spec-cache.pickle", ".enginebuild", "engines", ".buildlib", "checkpoints", "generated",
         "timing-cache", "out"}


def outside(base: Path) -> dict[str, list[str]]:
    """What a stray write would change outside the project: our names at the top of / and /tmp, and
    everything in the test's own tmp base (beside the project)."""
    tops = {str(d): sorted(n for n in os.listdir(d) if n in _OURS) for d in (Path("/"), Path("/tmp"))}
    return {**tops, str(base): sorted(os.listdir(base))}


def outcome(root: Path, data: bytes) -> str:
    """What `doit plan` would end in: 'plan' or 'error: <one line>'. Anything else raises (a test failure)."""
    (root / "models.yaml").write_bytes(data)
    try:
        spec = load_spec(root / "models.yaml", use_cache=False)
        Planner(spec, host=Host((), "x86_64-avx2")).states()
    except UserError as e:
        line = f"error: {e}"
        assert "\n" not in line.strip(), line
        return line
    return "plan"


def _check(tmp_path: Path, data: bytes) -> None:
    root = project(tmp_path)
    before = outside(tmp_path)
    t0 = time.monotonic()
    outcome(root, data)
    assert time.monotonic() - t0 < 10
    assert outside(tmp_path) == before


_YAML_CHARS = st.sampled_from(list(":{}[],&*!|>-#'\"\n\t ?%@`") + ["\x00", "\x7f", "é", "0", "1", "-1", "1e9",
                                                                   "true", "null", "..", "/", "~", "<<"])


@st.composite
def text_mutation(draw: st.DrawFn) -> bytes:
    text = draw(st.sampled_from(VALID))
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(text)))
        op = draw(st.sampled_from(["insert", "delete", "replace"]))
        piece = draw(st.lists(_YAML_CHARS, min_size=1, max_size=3).map("".join))
        n = draw(st.integers(1, 8))
        if op == "insert":
            text = text[:i] + piece + text[i:]
        elif op == "delete":
            text = text[:i] + text[i + n:]
        else:
            text = text[:i] + piece + text[i + n:]
    return text.encode("utf-8", "surrogatepass")


_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20), st.sampled_from(["..", "/", "/etc", "a/b", "sm90", "sm999", "cpu", "fp8", "enable", "", " "]),
    st.lists(st.integers(-3, 9), max_size=3), st.dictionaries(st.sampled_from(["tp", "pp", "x"]), st.integers(-2, 9),
                                                              max_size=2),
)


def _leaves(obj: object, at: tuple = ()) -> list[tuple]:
    if isinstance(obj, dict):
        return [at, *(p for k, v in obj.items() for p in _leaves(v, (*at, k)))]
    if isinstance(obj, list):
        return [at, *(p for i, v in enumerate(obj) for p in _leaves(v, (*at, i)))]
    return [at]


@st.composite
def value_mutation(draw: st.DrawFn) -> bytes:
    doc = yaml.safe_load(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(1, 3))):
        paths = [p for p in _leaves(doc) if p]
        at = draw(st.sampled_from(paths))
        parent = doc
        for k in at[:-1]:
            parent = parent[k]
        if draw(st.booleans()) and isinstance(parent, dict):
            parent[draw(st.sampled_from(["name", "backend", "archs", "build", "parallel", "checkpoint", "dtype",
                                         "quantization", "store", "bogus", "engines_dir"]))] = draw(_VALUES)
        else:
            parent[at[-1]] = draw(_VALUES)
    return yaml.safe_dump(doc, allow_unicode=True).encode()


# 1,200 per strategy in CI; the longer run behind RELIABILITY.md sets BUILDLIB_FUZZ_EXAMPLES.
FUZZ = settings(max_examples=int(os.environ.get("BUILDLIB_FUZZ_EXAMPLES", "1200")), deadline=timedelta(seconds=10),
                database=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@FUZZ
@given(data=text_mutation())
def test_text_mutations_plan_or_fail_in_one_line(tmp_path, data):
    _check(tmp_path, data)


@FUZZ
@given(data=value_mutation())
def test_value_mutations_plan_or_fail_in_one_line(tmp_path, data):
    _check(tmp_path, data)


def test_the_seeds_are_valid(tmp_path):
    root = project(tmp_path)
    assert [outcome(root, v.encode()) for v in VALID] == ["plan", "plan"]


@pytest.mark.parametrize("name", sorted(NASTIES))
def test_nasties_are_one_error_line_through_the_cli(tmp_path, name):
    root = project(tmp_path)
    data = NASTIES[name]
    (root / "models.yaml").write_bytes(data if isinstance(data, bytes) else data.encode())
    before = outside(tmp_path)
    t0 = time.monotonic()
    r = doit(root, "plan", timeout=60)
    assert time.monotonic() - t0 < 30
    assert r.returncode == 2, (name, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in r.stderr, (name, r.stderr)
    assert outside(tmp_path) == before
    assert not (root / ".buildlib").exists() and not (root / "engines").exists()  # nothing written
