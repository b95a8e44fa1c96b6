#!/usr/bin/env bash
# Engines proven fast on a real NVIDIA GPU (#28), and a serving node's fetch reading the GPU through NVML (#27).
# Usage (repo root; wheels of enginebuild and its deps in $WHEELS): OUT=<dir> PY=<python with torch> bash bench/gpu_perf.sh PART
#   PART=speed:    the shipped tiny Llama for sm90, built and validated (tokens/s, x eager), validated again (the
#                  noise a gate must tolerate); the same model with another seed built against a store holding the
#                  first build's Inductor cache (warm) and against an empty store (cold); then `doit release canary`
#                  and `enginebuild fetch --list` / fetch on this node (NVML).
#   PART=autotune: the same engine built with the defaults and with `max_autotune: true`, each against an empty
#                  store: build seconds and tokens/s side by side; then max_autotune with another seed against
#                  the store the first pushed its Inductor cache (autotune results included) to.
#   PART=multi:    bench/multi_gpu.py (issue 29: packing, per-GPU speed, fetch among GPU counts) on every GPU here;
#                  further arguments go to it (e.g. --engines 2).
set -u
PART=${1:-speed}; OUT=${OUT:-/tmp/gpu-perf}; PY=${PY:-python3}; WHEELS=${WHEELS:-.gpu-wheels}
mkdir -p "$OUT"; export PYTHONUNBUFFERED=1
export CXX=${PROOF_CXX:-/usr/bin/g++}  # the image's default CXX links libstdc++ statically (bench/RESULTS.md)
SITE=/tmp/enginebuild-site
$PY -m pip install -q --no-deps --target "$SITE" "$WHEELS"/*.whl >/dev/null 2>&1 || { echo "wheel install failed"; exit 1; }
export PYTHONPATH=$SITE PATH=$SITE/bin:$PATH
nvidia-smi --query-gpu=index,name,compute_cap,memory.total,clocks.sm,clocks.max.sm,driver_version --format=csv,noheader \
  | tee "$OUT/nvidia-smi-$PART.txt"
project() {  # project DIR SEED EXTRA_BUILD
  rm -rf "$1"; mkdir -p "$1"; printf '[tool.doit]\nloader = "buildlib"\n' > "$1/pyproject.toml"
  cat > "$1/models.yaml" <<YAML
defaults: {backend: aoti, dtype: float32, archs: [sm90], perf_gate: 0.95,
           build: {max_batch_size: 4, max_input_len: 64, max_seq_len: 128$3}}
models:
  - {name: tiny-llama, checkpoint: {generate: tinyllama, seed: $2}}
YAML
}
run() {  # run DIR STORE LABEL: doit, then one JSON line with build seconds and the measured speed
  (cd "$1" && BUILDLIB_STORE=$2 $PY -m doit > "$OUT/$3.log" 2>&1); local rc=$?
  $PY - "$1" "$3" "$rc" "$OUT/$3.log" <<'PYEOF' | tee -a "$OUT/$PART.jsonl"
import json, re, sys
from pathlib import Path
d, label, rc = Path(sys.argv[1]) / "engines/tiny-llama/sm90/tp1-pp1", sys.argv[2], int(sys.argv[3])
m = json.loads((d / "manifest.json").read_text()) if (d / "manifest.json").exists() else {}
v = json.loads((d / "validation.json").read_text()) if (d / "validation.json").exists() else {}
fetch = re.search(r"build cache .*: fetched [0-9.]+ MiB in ([0-9.]+)s", Path(sys.argv[4]).read_text())
print(json.dumps({"label": label, "rc": rc, "build_s": m.get("built", {}).get("seconds"),
                  "cache_fetch_s": float(fetch.group(1)) if fetch else None, "perf": v.get("perf"),
                  "perf_gate": v.get("perf_gate"), "ok": v.get("ok")}))
PYEOF
  grep -E "^build cache |regressed" "$OUT/$3.log" || true
}
if [ "$PART" = multi ]; then
  $PY bench/multi_gpu.py --out "$OUT/multi-gpu" "${@:2}"; exit $?
fi
S=/tmp/gp-store; rm -rf $S /tmp/gp-empty*; mkdir -p $S
if [ "$PART" = speed ]; then
  project /tmp/gp-a 0 ""; run /tmp/gp-a $S default-cold
  rm /tmp/gp-a/engines/tiny-llama/sm90/tp1-pp1/validation.json; run /tmp/gp-a $S default-revalidated
  mkdir -p /tmp/gp-empty1; project /tmp/gp-c 1 ""; run /tmp/gp-c /tmp/gp-empty1 seed1-cold
  project /tmp/gp-w 1 ""; run /tmp/gp-w $S seed1-warm
  (cd /tmp/gp-a && BUILDLIB_STORE=$S $PY -m doit release canary) 2>&1 | tee "$OUT/release.txt"
  mkdir -p /tmp/node && cd /tmp/node
  enginebuild fetch --store $S --channel canary --model tiny-llama --list 2>&1 | tee "$OUT/fetch.txt"
  enginebuild fetch --store $S --channel canary --model tiny-llama --dest /tmp/node/models 2>&1 | tee -a "$OUT/fetch.txt"
  enginebuild fetch --store $S --channel canary --model tiny-llama --dest /tmp/node/models 2>&1 | tee -a "$OUT/fetch.txt"
  ls -la /tmp/node/models | tee -a "$OUT/fetch.txt"
else
  mkdir -p /tmp/gp-empty2 /tmp/gp-empty3
  project /tmp/gp-d 0 ""; run /tmp/gp-d /tmp/gp-empty2 default
  project /tmp/gp-t 0 ", max_autotune: true"; run /tmp/gp-t /tmp/gp-empty3 max-autotune
  project /tmp/gp-u 1 ", max_autotune: true"; run /tmp/gp-u /tmp/gp-empty3 max-autotune-warm
fi
# Inductor's own dirs: the build caches (precompiled headers inside them), and nothing in its default temp dir
du -sh /tmp/gp-*/.buildlib/inductor-cache/* 2>&1 | tee "$OUT/caches-$PART.txt"
ls -la "${TMPDIR:-/tmp}"/torchinductor_* 2>&1 | tee -a "$OUT/caches-$PART.txt"
