"""The aoti compute side: the seeded tiny checkpoint, compile + validate through the worker subprocess, host ISA."""

from __future__ import annotations

import importlib.util
import re
import time
from pathlib import Path
from typing import Any

import pytest

from buildlib.core.model import CPU_ARCH_RE
from buildlib.core.tinyllama import write_checkpoint
from buildlib.host.isa import aarch64_tier, host_isa, x86_tier
from buildlib.host.proc import run_worker

needs_torch = pytest.mark.skipif(any(importlib.util.find_spec(m) is None for m in ("torch", "transformers")),
                                 reason="needs torch and transformers (pip install -e .[aoti])")

WORKER = "buildlib.backends.aoti_worker"
ENVELOPE = {"max_batch_size": 8, "max_input_len": 256, "max_seq_len": 512}
REPO = Path(__file__).resolve().parent.parent


def _files(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def _request(op: str, checkpoint: Path, package: Path, cache: Path) -> dict[str, Any]:
    return {"op": op, "checkpoint": str(checkpoint), "package": str(package), "dtype": "float32", "device": "cpu",
            "cache_dir": str(cache), **ENVELOPE}


@needs_torch
def test_checkpoint_is_a_pure_function_of_the_seed(tmp_path: Path) -> None:
    import torch

    torch.manual_seed(1)  # the global RNG must not matter
    write_checkpoint(tmp_path / "a", seed=0)
    torch.manual_seed(2)
    write_checkpoint(tmp_path / "b", seed=0)
    write_checkpoint(tmp_path / "c", seed=1)
    a, b, c = (_files(tmp_path / n) for n in "abc")
    assert set(a) == {"config.json", "generation_config.json", "model.safetensors"}
    assert a == b
    assert c["config.json"] == a["config.json"] and c["model.safetensors"] != a["model.safetensors"]
    write_checkpoint(tmp_path / "a", seed=1)  # rewriting in place replaces the dir atomically
    assert _files(tmp_path / "a") == c
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "c"]  # no temp dirs left behind


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One fp32 CPU package of the seed-0 tiny Llama (the slow part: ~1 min on 2 cores)."""
    d = tmp_path_factory.mktemp("aoti")
    write_checkpoint(d / "ckpt", seed=0)
    write_checkpoint(d / "other", seed=1)
    package = d / "engine" / "model.pt2"
    old = d / "cache" / "cq26old"  # what a build before 2026-12-06 left in the cache: its outputs, weights and all
    old.mkdir(parents=True)
    (old / "cq26old.wrapper.so").write_bytes(b"weights")
    (d / "cache" / "ab").mkdir()  # a kernel's own dir, kept
    (d / "cache" / "ab" / "cabkernel.so").write_bytes(b"kernel")
    t = time.perf_counter()
    result = run_worker(WORKER, _request("compile", d / "ckpt", package, d / "cache"), d / "compile.log",
                        "build:tiny", cwd=REPO)
    return {"dir": d, "package": package, "result": result, "wall_s": time.perf_counter() - t}


@needs_torch
def test_compile_exports_the_bounded_envelope(compiled: dict[str, Any]) -> None:
    r, package = compiled["result"], compiled["package"]
    assert package.is_file() and r["package"] == str(package)
    assert r["dynamic_shapes"]["batch"] == [1, 8] and r["dynamic_shapes"]["seq"] == [1, 512]
    assert r["dynamic_shapes"]["mode"] in ("bounded", "bounded-deferred")
    assert r["isa"] == host_isa() and r["export_s"] > 0 and r["compile_s"] > 0
    cache = compiled["dir"] / "cache"
    assert not (cache / "cq26old").exists() and (cache / "ab" / "cabkernel.so").is_file()
    assert not list(cache.rglob("*.wrapper.*")) and list(cache.glob("precompiled_headers/*.gch"))
    assert sorted(p.name for p in package.parent.iterdir()) == ["model.pt2"]  # the scratch dir went with the compile


@needs_torch
def test_validate_matches_eager_in_fp32(compiled: dict[str, Any]) -> None:
    d = compiled["dir"]
    r = run_worker(WORKER, _request("validate", d / "ckpt", compiled["package"], d / "cache"), d / "validate.log",
                   "validate:tiny", cwd=REPO)
    assert r["ok"], r
    assert r["max_rel_err"] <= r["tolerance"] == 1e-4
    assert r["tokens"]["compiled"] == r["tokens"]["eager"] and r["tokens_match"]
    assert [1, 1] in r["shapes"] and [8, 13] in r["shapes"]  # several points of the envelope


@needs_torch
def test_validate_rejects_a_package_built_from_other_weights(compiled: dict[str, Any]) -> None:
    d = compiled["dir"]
    r = run_worker(WORKER, _request("validate", d / "other", compiled["package"], d / "cache"), d / "tamper.log",
                   "validate:tiny", cwd=REPO)
    assert not r["ok"]
    assert r["max_rel_err"] > 100 * r["tolerance"]


def test_host_isa() -> None:
    isa = host_isa()
    assert CPU_ARCH_RE.match(isa) and isa != "cpu"
    assert re.fullmatch(r"x86_64(-(sse4|avx2|avx512\w*|amx\w*))?|aarch64-(neon|sve128|sve256)|[a-z0-9_]+", isa)
    t = time.perf_counter()
    host_isa.__wrapped__()
    assert time.perf_counter() - t < 0.005


def test_isa_tiers_mirror_inductor() -> None:
    base = {"sse4_2", "popcnt", "ssse3", "avx2"}
    avx512 = base | {"avx512f", "avx512bw", "avx512dq", "avx512vl"}
    spr = avx512 | {"avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8"}
    assert x86_tier({"sse4_2", "popcnt", "ssse3"}) == "x86_64-sse4"
    assert x86_tier(base) == "x86_64-avx2"
    assert x86_tier(base | {"avx512f"}) == "x86_64-avx2"  # Xeon Phi-like: no bw/dq/vl
    assert x86_tier(avx512) == "x86_64-avx512"
    assert x86_tier(avx512 | {"avx512_vnni"}) == "x86_64-avx512vnni"
    assert x86_tier(avx512 | {"avx512_vnni", "avx512_bf16"}) == "x86_64-avx512vnnibf16"
    assert x86_tier(spr) == "x86_64-amxbf16"
    assert x86_tier(spr | {"amx_fp16"}) == "x86_64-amxbf16fp16"
    assert x86_tier(spr, aten_cpu_capability="avx2") == "x86_64-avx2"
    assert x86_tier(spr, aten_cpu_capability="default") == "x86_64-sse4"
    assert aarch64_tier({"asimd", "sve", "bf16"}, 256) == "aarch64-sve256"
    assert aarch64_tier({"asimd", "sve2", "bf16"}, 128) == "aarch64-sve128"
    assert aarch64_tier({"asimd", "sve"}, 256) == "aarch64-neon"  # inductor wants BF16 with SVE


_PICK = """
import json, subprocess, sys
from buildlib.backends.aoti_worker import _configure
_configure({"device": "cuda", "cache_dir": sys.argv[1]})
if sys.argv[2] == "probing":
    import os
    os.environ.pop("TORCHINDUCTOR_VEC_ISA_OK", None)
children = []
spawn = subprocess.Popen.__init__
def counted(self, *a, **k):
    children.append(a[0] if a else k.get("args"))
    spawn(self, *a, **k)
subprocess.Popen.__init__ = counted
from torch._inductor.cpu_vec_isa import pick_vec_isa
print(json.dumps({"isa": str(pick_vec_isa()), "children": len(children)}))
"""


@needs_torch
def test_a_cuda_build_picks_the_same_cpu_isa_without_probing(tmp_path: Path) -> None:
    """A CUDA package's host code gets no SIMD tier. Inductor would still compile and dlopen a test library per ISA
    (a child Python that imports torch each, ~4.5 s apiece on the H100 host) before dropping them all; the worker's
    environment gives the same pick with no child process."""
    import json
    import subprocess
    import sys

    def pick(mode: str) -> dict[str, Any]:
        r = subprocess.run([sys.executable, "-c", _PICK, str(tmp_path / mode), mode], capture_output=True, text=True,
                           cwd=REPO, check=True)
        return json.loads(r.stdout.strip().splitlines()[-1])

    ours, probing = pick("ours"), pick("probing")
    assert ours["isa"] == probing["isa"] == "INVALID_VEC_ISA"  # torch's name for "no SIMD flags"
    assert ours["children"] == 0 and probing["children"] > 0, (ours, probing)
