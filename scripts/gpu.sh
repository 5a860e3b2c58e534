#!/usr/bin/env bash
# The GPU path, in five verbs. Here (hospital machine):
#   scripts/gpu.sh prepare [TRAINSET]        train+val splits -> runs/gpu/pack.npz (git-ignored, <= budget)
# On the device machine (the `run` tool, carry ["runs/gpu"]; results land in $OUT):
#   scripts/gpu.sh train [MINUTES] [BATCH]   bf16 training on CUDA from the shipped default, val scores,
#                                            the bundle in 15 MiB parts, then the pipeline bench
#   scripts/gpu.sh ablate [STEPS] [BATCH]    the recipe ablation (models/ablation.py) on the device, same
#                                            seed and steps per arm from the shipped default -> $OUT/ablation.json
#   scripts/gpu.sh bench [BATCH]             `xraysynth bench pipeline` (batch >= 1,024 on CUDA, encoding on
#                                            all cores) and its ratio to the encode-bound limit
# Back here:
#   scripts/gpu.sh fetch DIR                 rejoin DIR's bundle parts (sha256 checked) -> runs/gpu/bundle.pt,
#                                            then score it on the test split with `xraysynth evaluate`
# The same path on a CPU at tiny size (the end-to-end check):
#   DEVICE=cpu PYTHON=.venv/bin/python OUT=runs/gpu/cpu_test N_EVAL=32 BN_CALIB=128 SCORE_N=64 \
#     BENCH_IMAGES=64 BENCH_BATCH=64 scripts/gpu.sh train 0.2 8
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
OUT=${OUT:-runs/gpu/out}
export PYTHONUNBUFFERED=1

xraysynth() { "$PY" -c "from cli import app; app(prog_name='xraysynth')" "$@"; }

bench() {
  local batch=${1:-1024} n=${BENCH_IMAGES:-8192}
  mkdir -p "$OUT" bench/out
  if ! "$PY" -c "import workers.bench, service.settings, boto3, sqlalchemy" 2>/dev/null; then
    echo "bench: skipped, the service's Python packages are not importable here (carry them as wheels)" \
      | tee "$OUT/bench.txt"
    return 0
  fi
  local before; before=$(find bench/out -name 'pipeline-*.json' 2>/dev/null | wc -l)
  xraysynth bench pipeline --n-images "$n" --batch "$batch" --encode-processes "$(nproc --all)" \
    --bundle models/checkpoints/default/bundle.pt 2>&1 | tee "$OUT/bench.txt"
  [ "$(find bench/out -name 'pipeline-*.json' 2>/dev/null | wc -l)" -gt "$before" ] || { echo "bench wrote no result"; return 1; }
  local latest; latest=$(ls -t bench/out/pipeline-*.json | head -n 1)
  cp "$latest" "$OUT/bench.json"
  "$PY" - "$latest" <<'PYEOF' | tee -a "$OUT/bench.txt"
import json, sys
r = json.load(open(sys.argv[1]))
st = r["stages"]
enc, e2e = st["encode"]["img_per_s"], r["end_to_end_img_per_s"]
print(f"pipeline {e2e:.1f} img/s on {r['device']} (batch {r['batch']}, {r['encode_processes']} encode processes); "
      f"encode-bound limit {enc:.1f} img/s; pipeline / encode-bound limit = {e2e / enc:.2f}")
PYEOF
}

case "${1:-}" in
  prepare)
    "$PY" -m models.gpu_pack pack --trainset "${2:-runs/trainset}" --out runs/gpu --budget-mb "${BUDGET_MB:-40}"
    du -h runs/gpu/pack.npz ;;
  train)
    minutes=${2:-6}; batch=${3:-256}
    [ -f runs/gpu/pack.npz ] || { echo "runs/gpu/pack.npz missing: run 'scripts/gpu.sh prepare' and carry runs/gpu"; exit 2; }
    if [ "$DEVICE" = cuda ]; then nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true; fi
    "$PY" -m models.gpu_run train --pack runs/gpu/pack.npz --out "$OUT" --minutes "$minutes" --batch "$batch" \
      --device "$DEVICE" --eval-every "${EVAL_EVERY:-2000}" --n-eval "${N_EVAL:-730}" --bn-calib "${BN_CALIB:-2048}" \
      ${SCORE_N:+--score-n "$SCORE_N"}
    if [ "$DEVICE" = cuda ]; then bench 1024; else bench "${BENCH_BATCH:-64}"; fi ;;
  ablate)
    [ -f runs/gpu/pack.npz ] || { echo "runs/gpu/pack.npz missing: run 'scripts/gpu.sh prepare' and carry runs/gpu"; exit 2; }
    work=$(mktemp -d)
    "$PY" -m models.gpu_pack unpack --pack runs/gpu/pack.npz --out "$work/trainset"
    "$PY" -m models.ablation --trainset "$work/trainset" --out "$work/ablation" --steps "${2:-2000}" \
      --batch "${3:-128}" --device "$DEVICE" --threads "$(nproc --all)" --score-seeds 777,1,2,3,4
    mkdir -p "$OUT" && cp "$work/ablation/ablation.json" "$OUT/ablation.json" ;;
  bench)
    bench "${2:-1024}" ;;
  fetch)
    "$PY" -m models.gpu_run join --parts "$2" --out runs/gpu/bundle.pt
    xraysynth evaluate runs/gpu/bundle.pt --trainset "${TRAINSET:-runs/trainset}" --out runs/gpu/bundle.pt \
      --card-json runs/gpu/card.json --quick --no-membership ;;
  *)
    sed -n '2,18p' "$0"; exit 2 ;;
esac
