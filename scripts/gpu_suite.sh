#!/usr/bin/env bash
# The GPU rounds of a release, on one CUDA machine, logs and JSON into OUT_DIR:
#   bash scripts/gpu_suite.sh OUT_DIR check     kernel + gla tests compiled on CUDA, scripts/gpu_check.py
#   bash scripts/gpu_suite.sh OUT_DIR bench     attention and scorer benchmarks
#   bash scripts/gpu_suite.sh OUT_DIR train     training throughput (recipe preset and the paper's shape)
#   bash scripts/gpu_suite.sh OUT_DIR hf        Hugging Face model at 64K, "sdpa" vs "lighthouse"
# Parts run in the order given; a failing part does not stop the next. Needs PYTHONPATH=src or an install.
set -uo pipefail
out=$1; shift
mkdir -p "$out"
export PYTHONUNBUFFERED=1
status=0
for part in "$@"; do
  echo "=== $part ($(date -u +%H:%M:%S))"
  case $part in
    check)
      python3 -m pytest -q -p no:cacheprovider tests/test_kernels.py tests/test_gla.py 2>&1 | tee "$out/pytest_cuda.log" | tail -n 5
      python3 scripts/gpu_check.py --out "$out" > "$out/gpu_check.log" 2>&1; tail -n 25 "$out/gpu_check.log" ;;
    bench)
      python3 -m lighthouse.bench attention --lengths 32768,131072,524288 --no-reference --budget 4 \
        --out "$out/attention.json" > "$out/attention.log" 2>&1; tail -n 14 "$out/attention.log"
      python3 -m lighthouse.bench scorers --seq-lens 32768,131072,524288 --budget 4 \
        --out "$out/scorers.json" > "$out/scorers.log" 2>&1; tail -n 16 "$out/scorers.log" ;;
    train)
      python3 -m lighthouse.bench train --config configs/recipe-64k.toml --seq-lens 16K,32K,64K,128K,256K \
        --out "$out/train_recipe.json" > "$out/train_recipe.log" 2>&1; tail -n 12 "$out/train_recipe.log"
      python3 -m lighthouse.bench train --config configs/paper-530m.toml --seq-lens 32K,64K,96K,128K \
        --out "$out/train_paper.json" > "$out/train_paper.log" 2>&1; tail -n 12 "$out/train_paper.log" ;;
    hf)
      python3 -m lighthouse.bench hf --out "$out/hf.json" > "$out/hf.log" 2>&1; tail -n 12 "$out/hf.log" ;;
    *) echo "unknown part $part"; status=2 ;;
  esac
done
exit $status
