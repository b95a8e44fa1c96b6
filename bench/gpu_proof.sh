#!/usr/bin/env bash
# GPU proof on a real NVIDIA machine (issues 3 and 5), run from the repo root:
#   1. the real nvidia-smi detects the GPUs; `doit plan` on the shipped models.yaml sees sm90;
#   2. two AOTInductor engines (the shipped tiny-llama and a second seed) are built for sm90 in
#      parallel (`doit -n 2 -P process`), each on its own GPU (GPU slots), while nvidia-smi samples
#      which process runs on which GPU; then tiny-llama is validated on the GPU against eager PyTorch;
#   3. the same kind of build, two engines one at a time (`doit -n 1`), for the wall-time baseline.
# Usage: OUT=<dir> PY=<python with torch> bash bench/gpu_proof.sh
set -u
OUT=${OUT:-/tmp/gpu-proof}; PY=${PY:-python3}; ARCH=${ARCH:-sm90}
mkdir -p "$OUT"; export PYTHONUNBUFFERED=1
REPO=$PWD
# The device image's default CXX (/opt/gcc/bin/g++) links libstdc++ statically into every AOTI
# wrapper.so, which then segfaults on load; the system g++ links it dynamically. See bench/RESULTS.md.
export CXX=${PROOF_CXX:-/usr/bin/g++}
export BUILDLIB_GPU_LOCK_DIR=$OUT/gpu-locks
{ echo "== nvidia-smi"; nvidia-smi --query-gpu=index,name,compute_cap,memory.total,memory.used,driver_version --format=csv,noheader
  echo "== versions"; $PY -c 'import torch, sys; print(sys.version.split()[0], torch.__version__, torch.version.cuda)'; $CXX --version | head -1
} 2>&1 | tee "$OUT/env.txt"
nvidia-smi --query-compute-apps=timestamp,pid,gpu_bus_id,used_memory --format=csv,noheader -lms 500 > "$OUT/smi-apps.csv" 2>&1 &
SMI=$!
nvidia-smi --query-gpu=index,pci.bus_id --format=csv,noheader > "$OUT/smi-bus.csv"
fleet() {  # fleet DIR NAME1 SEED1 VALIDATE1 NAME2 SEED2: a project with two tiny models for $ARCH
  mkdir -p "$1"; printf '[tool.doit]\nloader = "buildlib"\n' > "$1/pyproject.toml"
  cat > "$1/models.yaml" <<YAML
defaults: {backend: aoti, dtype: float32, archs: [$ARCH], validate: false,
           build: {max_batch_size: 4, max_input_len: 64, max_seq_len: 128}}
models:
  - {name: $2, checkpoint: {generate: tinyllama, seed: $3}, validate: $4}
  - {name: $5, checkpoint: {generate: tinyllama, seed: $6}}
YAML
}
timed() { local t0=$EPOCHREALTIME; "$@"; local rc=$?; awk -v a="$t0" -v b="$EPOCHREALTIME" -v rc=$rc 'BEGIN {printf "wall %.1f s (rc %d)\n", b - a, rc}'; }
echo "== plan of the shipped models.yaml" | tee -a "$OUT/run.txt"
$PY -m doit plan 2>&1 | tee -a "$OUT/run.txt"
fleet /tmp/par tiny-llama 0 true tiny-b 1; fleet /tmp/ser tiny-c 2 false tiny-d 3
echo "== parallel: doit -n 2 -P process (two sm90 builds, then tiny-llama validated on the GPU)" | tee -a "$OUT/run.txt"
(cd /tmp/par && timed $PY -m doit -n 2 -P process && $PY -m doit plan) 2>&1 | tee -a "$OUT/run.txt"
echo "== one at a time: doit -n 1 (two sm90 builds)" | tee -a "$OUT/run.txt"
(cd /tmp/ser && timed $PY -m doit -n 1) 2>&1 | tee -a "$OUT/run.txt"
kill $SMI
for d in /tmp/par /tmp/ser; do for m in "$d"/engines/*/*/tp1-pp1/manifest.json; do
  $PY -c 'import json,sys; m=json.load(open(sys.argv[1])); print(m["name"], m["built"]["at"], m["built"]["seconds"], "s on GPU", m["built"].get("gpu_indices"))' "$m"
done; done 2>&1 | tee "$OUT/builds.txt"
cp /tmp/par/engines/tiny-llama/$ARCH/tp1-pp1/validation.json "$OUT/validation.json" 2>/dev/null
for d in /tmp/par /tmp/ser; do cat "$d"/engines/*/*/tp1-pp1/build.log; done > "$OUT/build-logs.txt" 2>&1
