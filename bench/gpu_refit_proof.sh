#!/usr/bin/env bash
# GPU proof for refit (issue #14) on a real NVIDIA machine: bench/refit_bench.py --arch sm90, i.e. the tiny Llama with
# `refit: true` built for sm90 by `doit`, new weights refitted by `doit`, against a full sm90 build of the same engine
# in the same run; validation of the refitted package on the GPU against eager PyTorch on the new weights.
# Usage (repo root, wheels of enginebuild and its deps in $WHEELS): OUT=<dir> PY=<python with torch> bash bench/gpu_refit_proof.sh
set -u
OUT=${OUT:-/tmp/gpu-refit-proof}; PY=${PY:-python3}; WHEELS=${WHEELS:-.gpu-wheels}
mkdir -p "$OUT"; export PYTHONUNBUFFERED=1
export CXX=${PROOF_CXX:-/usr/bin/g++}  # the image's default CXX links libstdc++ statically (bench/RESULTS.md)
SITE=/tmp/enginebuild-site
$PY -m pip install -q --no-deps --target "$SITE" "$WHEELS"/*.whl >/dev/null 2>&1 || { echo "wheel install failed"; exit 1; }
export PYTHONPATH=$SITE
nvidia-smi --query-gpu=index,name,compute_cap,memory.total --format=csv,noheader | tee "$OUT/nvidia-smi.txt"
$PY -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))" | tee "$OUT/env.txt"
$PY bench/refit_bench.py --arch sm90 --out "$OUT/refit-sm90.json" > "$OUT/run.txt" 2>&1; echo "rc=$?" | tee -a "$OUT/run.txt"
tail -40 "$OUT/run.txt"
