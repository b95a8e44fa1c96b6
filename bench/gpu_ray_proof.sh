#!/usr/bin/env bash
# GPU proof for the Ray fleet refresh (issue #12), on a real NVIDIA machine without Ray:
#   1. the node command's resources from the real nvidia-smi (`python -m buildlib.fleet.ray_node --print`);
#   2. one sm90 AOTInductor build and its validation through the worker entry point a Ray task calls
#      (`python -m buildlib.fleet.remote REQUEST.json`), with the key the driver planned (`doit plan --json`).
# Usage (repo root, wheels of enginebuild and its deps in $WHEELS): OUT=<dir> PY=<python with torch> bash bench/gpu_ray_proof.sh
set -u
OUT=${OUT:-/tmp/gpu-ray-proof}; PY=${PY:-python3}; WHEELS=${WHEELS:-.gpu-wheels}
mkdir -p "$OUT"; export PYTHONUNBUFFERED=1
export CXX=${PROOF_CXX:-/usr/bin/g++}  # the image's default CXX links libstdc++ statically (bench/RESULTS.md)
SITE=/tmp/enginebuild-site
$PY -m pip install -q --no-deps --target "$SITE" "$WHEELS"/*.whl >/dev/null 2>&1 || { echo "wheel install failed"; exit 1; }
export PYTHONPATH=$SITE
{ echo "== nvidia-smi"; nvidia-smi --query-gpu=index,name,compute_cap,memory.total,memory.used,driver_version --format=csv,noheader
  echo "== node command"; $PY -m buildlib.fleet.ray_node --print --head --node-ip-address 127.0.0.1
} 2>&1 | tee "$OUT/node.txt"
P=/tmp/ray-proof; rm -rf "$P"; mkdir -p "$P"; printf '[tool.doit]\nloader = "buildlib"\n' > "$P/pyproject.toml"
cat > "$P/models.yaml" <<'YAML'
defaults: {backend: aoti, dtype: float32, build: {max_batch_size: 4, max_input_len: 64, max_seq_len: 128}}
models:
  - {name: tiny-llama, checkpoint: {generate: tinyllama, seed: 0}, archs: [sm90]}
YAML
cd "$P"
$PY -m doit checkpoint:tiny-llama > "$OUT/driver.txt" 2>&1
$PY -m doit plan --json > plan.json 2>> "$OUT/driver.txt"
KEY=$($PY -c 'import json; print(json.load(open("plan.json"))[0]["key"])')
echo "driver planned tiny-llama/sm90/tp1-pp1 key $KEY" | tee -a "$OUT/driver.txt"
for step in build validate; do
  printf '{"models": "%s/models.yaml", "engine": "tiny-llama/sm90/tp1-pp1", "step": "%s", "key": "%s"}' "$P" "$step" "$KEY" > req-$step.json
  t0=$EPOCHREALTIME
  $PY -m buildlib.fleet.remote req-$step.json > "$OUT/remote-$step.json" 2> "$OUT/remote-$step.log"
  echo "remote $step rc=$? wall $(awk -v a=$t0 -v b=$EPOCHREALTIME 'BEGIN{printf "%.1f", b-a}') s" | tee -a "$OUT/driver.txt"
done
$PY -m doit plan >> "$OUT/driver.txt" 2>&1
cp engines/tiny-llama/sm90/tp1-pp1/manifest.json "$OUT/manifest.json" 2>/dev/null
cp engines/tiny-llama/sm90/tp1-pp1/validation.json "$OUT/validation.json" 2>/dev/null
tail -5 "$OUT/remote-build.json" "$OUT/remote-validate.json"
