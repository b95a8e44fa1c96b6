#!/usr/bin/env bash
# GPU proof for what users see (issue #13) on a real NVIDIA machine: the shipped models.yaml built by `doit`
# off a terminal (plain phase lines with the GPU each step holds, heartbeats, the tally), a no-op run, then
# `doit plan` and `doit status --html` with the forecast from the builds just recorded.
# Usage (repo root, wheels of enginebuild and its deps in $WHEELS): OUT=<dir> PY=<python with torch> bash bench/gpu_status_proof.sh
set -u
OUT=${OUT:-/tmp/gpu-status-proof}; PY=${PY:-python3}; WHEELS=${WHEELS:-.gpu-wheels}
mkdir -p "$OUT"; export PYTHONUNBUFFERED=1 BUILDLIB_HEARTBEAT_SECONDS=15
export CXX=${PROOF_CXX:-/usr/bin/g++}  # the image's default CXX links libstdc++ statically (bench/RESULTS.md)
SITE=/tmp/enginebuild-site
$PY -m pip install -q --no-deps --target "$SITE" "$WHEELS"/*.whl >/dev/null 2>&1 || { echo "wheel install failed"; exit 1; }
export PYTHONPATH=$SITE
nvidia-smi --query-gpu=index,name,compute_cap,memory.total --format=csv,noheader | tee "$OUT/nvidia-smi.txt"
P=/tmp/status-proof; rm -rf "$P"; mkdir -p "$P"; cp models.yaml "$P/"; printf '[tool.doit]\nloader = "buildlib"\n' > "$P/pyproject.toml"
cd "$P"
t0=$EPOCHREALTIME; $PY -m doit > "$OUT/run.txt" 2>&1; rc=$?
echo "first run rc=$rc wall $(awk -v a=$t0 -v b=$EPOCHREALTIME 'BEGIN{printf "%.1f", b-a}') s" | tee -a "$OUT/summary.txt"
$PY -m doit > "$OUT/noop.txt" 2>&1; echo "no-op rc=$? last line: $(tail -1 "$OUT/noop.txt")" | tee -a "$OUT/summary.txt"
$PY -m doit plan > "$OUT/plan.txt" 2>&1
$PY -m doit status --html "$OUT/status.html" > "$OUT/status.txt" 2>&1
grep -E ": (load|export|compile|build|validate|compare) \(after|still running|built |validated " "$OUT/run.txt" | cut -c1-200
tail -2 "$OUT/run.txt"; cat "$OUT/plan.txt" "$OUT/status.txt"
