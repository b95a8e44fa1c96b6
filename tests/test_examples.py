"""The shipped examples are valid: examples/fleet.yaml plans through the real doit CLI."""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.conftest import LOADER_PYPROJECT, REPO, plan, write_hf_checkpoint


def test_fleet_example_plans(tmp_path: Path, standins):
    root = tmp_path / "repo"
    (root / "examples").mkdir(parents=True)
    shutil.copy(REPO / "examples/fleet.yaml", root / "examples/models.yaml")
    for name in ("llama-3-8b", "llama-3-70b", "mistral-7b", "qwen2-7b"):
        write_hf_checkpoint(root / "checkpoints" / name)
    (root / "examples/pyproject.toml").write_text(LOADER_PYPROJECT)
    states = plan(root / "examples", standins())
    assert len(states) == 11
    assert states["llama-3-70b/sm90/tp2-pp2"]["gpus"] == 4
    assert states["llama-3-8b/sm80/tp1-pp1"]["state"] == "blocked"
    assert states["qwen2-7b-h200/sm90/tp1-pp1"]["reasons"][0] == "needs an sm90 host with a NVIDIA H200"
    assert states["mistral-7b-int4/sm90/tp1-pp1"]["state"] == "missing"


def test_ci_example_is_read_only_for_pull_requests_and_signs_on_main():
    """#26 item 5, read from the workflow itself: the store is written (and the signing key exists) only on a push to
    main, every job trusts main's key alone, and the build jobs ask only for runner labels actionlint is told of."""
    import yaml

    wf = yaml.safe_load((REPO / "examples/ci/engines.yml").read_text())
    env = wf["env"]
    main = "github.event_name == 'push' && github.ref == 'refs/heads/main'"
    assert env["BUILDLIB_STORE_PUSH"] == f"${{{{ ({main}) && '1' || '0' }}}}"
    assert env["STORE_ROLE"].startswith(f"${{{{ ({main}) && vars.ENGINE_STORE_WRITE_ROLE ||")
    assert env["BUILDLIB_STORE_TRUST"] == "ci/engine-signing.pub"
    for name, job in wf["jobs"].items():
        roles = [s["with"]["role-to-assume"] for s in job["steps"] if "configure-aws-credentials" in s.get("uses", "")]
        assert roles == ["${{ env.STORE_ROLE }}"], name  # no job assumes a writing role of its own
        signing = [s for s in job["steps"] if "BUILDLIB_STORE_SIGN_KEY" in s.get("run", "")]
        assert all(s["if"] == main for s in signing), name
        assert not any("BUILDLIB_STORE_PUSH" in str(s.get("env", {})) for s in job["steps"]), name
    labels = yaml.safe_load((REPO / ".github/actionlint.yaml").read_text())["self-hosted-runner"]["labels"]
    assert "gpu" in labels and {"sm80", "sm90"} <= set(labels)
