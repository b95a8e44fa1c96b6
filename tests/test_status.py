"""`doit status` (issue #13 items 2 and 3): the model x arch x parallel matrix, the forecast in plan and status, and
the self-contained HTML report rendered by a real headless Chromium (Debian's package; .ci/run installs it)."""

from __future__ import annotations

import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest

from buildlib.report.forecast import ArchForecast
from buildlib.report.status_html import COLORS
from tests.conftest import LOADER_PYPROJECT, doit, write_hf_checkpoint

MODELS = """\
defaults: {{backend: trtllm, build: {{max_batch_size: 8}}}}
models:
  - {{name: llama, checkpoint: ckpt/llama, archs: [sm80, sm90], build: {{max_batch_size: {mbs}}}}}
  - {{name: mistral, checkpoint: ckpt/mistral, archs: [sm90]}}
{extra}"""
QWEN = "  - {name: qwen, checkpoint: ckpt/qwen, archs: [sm90]}\n"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """Built once: llama and mistral for sm90 on a 1-GPU sm90 host; then llama's build option changes (stale),
    qwen is added (missing, its model never built) and sm80 has no host (blocked)."""
    from tests.conftest import H100
    from tests.standins import standin_env

    root = tmp_path_factory.mktemp("status")
    env = standin_env(root / "standins", gpus=[H100])
    env["STANDIN_TRTLLM_LOG"] = str(root / "trtllm.log")
    write_hf_checkpoint(root / "ckpt/llama", shards=1, seed=1)
    write_hf_checkpoint(root / "ckpt/mistral", shards=1, seed=2, arch="MistralForCausalLM")
    write_hf_checkpoint(root / "ckpt/qwen", shards=2, seed=3, arch="Qwen2ForCausalLM")
    (root / "pyproject.toml").write_text(LOADER_PYPROJECT)
    (root / "models.yaml").write_text(MODELS.format(mbs=8, extra=""))
    r = doit(root, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    (root / "models.yaml").write_text(MODELS.format(mbs=16, extra=QWEN))
    return root, env


def test_status_prints_the_matrix_and_the_forecast(fleet):
    root, env = fleet
    r = doit(root, "status", env=env)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["engine", "sm80", "sm90"]
    assert lines[1].startswith("llama tp1-pp1") and "blocked: needs an sm80 host" in lines[1]
    assert "stale: build.max_batch_size 8 -> 16" in lines[1]
    assert lines[2].split()[:3] == ["mistral", "tp1-pp1", "-"] and lines[2].split()[3] == "fresh"
    assert lines[3].split()[:4] == ["qwen", "tp1-pp1", "-", "missing:"], lines  # missing: not built yet
    forecast = [line for line in lines if line.startswith("forecast  ")]
    # sm90: llama from its own last build, qwen (never built) from the other models' builds scaled by size
    assert len(forecast) == 2 and forecast[1].startswith("forecast  sm90: 2 builds, "), forecast
    assert "on this host's 1 sm90 GPU" in forecast[1]
    assert "1 from builds of other models scaled by size, 1 from its own last build" in forecast[1]
    assert forecast[0].startswith("forecast  sm80: 1 build, ") and "no sm80 GPU here" in forecast[0]
    assert lines[-1] == "4 engines: 1 blocked, 1 fresh, 1 missing, 1 stale"
    plan = doit(root, "plan", "--gpus", "4", env=env).stdout.splitlines()  # the forecast is in plan too
    assert any(line.startswith("forecast  sm90: 2 builds") and "on 4 GPUs" in line for line in plan), plan


def test_wall_time_places_the_longest_build_first_on_the_gpus_that_free_first():
    f = ArchForecast("sm90", builds=[(100.0, 1), (100.0, 1), (100.0, 1)])
    assert f.wall_seconds(2) == 200.0 and f.wall_seconds(3) == 100.0
    f = ArchForecast("sm90", builds=[(50.0, 1), (100.0, 2)])  # the 2-GPU build first, then the other
    assert f.wall_seconds(2) == 150.0 and f.wall_seconds(4) == 100.0


def _png_pixels(path: Path) -> tuple[int, int, list[bytes]]:
    """Decode an 8-bit RGB/RGBA non-interlaced PNG (what Chromium writes) with the stdlib: (width, height, rows)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width = 8, b"", 0
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            width, height, depth, ctype, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert depth == 8 and ctype in (2, 6) and not interlace
            bpp = 3 if ctype == 2 else 4
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    raw, stride, rows, prev = zlib.decompress(idat), width * bpp, [], bytearray(width * bpp)
    for y in range(height):
        f, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            pred = (0, a, b, (a + b) // 2, a + b - c)[f] if f < 4 else 0
            if f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else b if pb <= pc else c
            line[i] = (line[i] + pred) & 0xFF
        rows.append(bytes(line))
        prev = line
    return width, bpp, rows


def test_the_html_report_is_self_contained_and_renders_in_chromium(fleet, tmp_path):
    root, env = fleet
    out = tmp_path / "status.html"
    r = doit(root, "status", "--html", str(out), env=env)
    assert r.returncode == 0, r.stderr
    page = out.read_text()
    assert "<script" not in page and "src=" not in page and "@import" not in page  # nothing fetched
    assert page.count("<details>") == 4 and "&quot;built_key&quot;" in page and "Forecast" in page and "<svg" in page
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "Chromium is needed for this test: apt-get install chromium (.ci/run does)"
    shot = tmp_path / "shot.png"
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={shot}",
                    "--window-size=1000,700", out.as_uri()], capture_output=True, timeout=120, check=True,
                   env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"})
    width, bpp, rows = _png_pixels(shot)
    seen: dict[str, int] = {}
    for state in ("fresh", "stale", "missing", "blocked"):
        rgb = bytes.fromhex(COLORS[state][1:])
        seen[state] = sum(1 for row in rows for k in range(width) if row[k * bpp:k * bpp + 3] == rgb)
    assert all(n > 2000 for n in seen.values()), seen  # every state's cell is painted, not just its legend
