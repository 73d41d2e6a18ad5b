#!/usr/bin/env bash
# The GPU rounds of a release, on one CUDA machine, logs and JSON into OUT_DIR:
#   bash scripts/gpu_suite.sh OUT_DIR check     kernel + gla tests compiled on CUDA, scripts/gpu_check.py
#   bash scripts/gpu_suite.sh OUT_DIR bench     attention and scorer benchmarks
#   bash scripts/gpu_suite.sh OUT_DIR train     training throughput (recipe preset and the paper's shape)
#   bash scripts/gpu_suite.sh OUT_DIR hf        Hugging Face model at 64K, "sdpa" vs "lighthouse"
#   bash scripts/gpu_suite.sh OUT_DIR dist      (2 GPUs) data-parallel scaling at 64K, context parallelism at 512K
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
    dist)
      # The recipe model (27.5M, 8 layers); the same 4 sequences of 64K per step on 1 GPU (accumulated) and on 2.
      common=(--config configs/recipe-64k.toml --no-progress --set "out_dir=\"$out/runs\"" --set 'data.source="stdlib"'
              --set data.val_windows=2 --set training.eval_every=0 --set training.checkpoint_every=0
              --set training.log_every=5 --set optim.warmup_steps=5 --set training.batch_size=4
              --set training.micro_batch_size=1 --set stages.0.steps=20 --set stages.1.steps=5)
      CUDA_VISIBLE_DEVICES=0 timeout 300 python3 -m lighthouse train "${common[@]}" --set name=dp1-64k \
        > "$out/dp1.log" 2>&1; tail -n 6 "$out/dp1.log"
      timeout 300 python3 -m torch.distributed.run --standalone --nproc-per-node 2 -m lighthouse train "${common[@]}" \
        --set name=dp2-64k > "$out/dp2.log" 2>&1; tail -n 6 "$out/dp2.log"
      # One 512K sequence over 2 GPUs: Lighthouse in every layer, then dense context-parallel attention.
      timeout 420 python3 -m torch.distributed.run --standalone --nproc-per-node 2 -m lighthouse train \
        --config configs/recipe-64k.toml --no-progress --set "out_dir=\"$out/runs\"" --set name=cp2-512k \
        --set 'data.source="stdlib"' --set data.val_fraction=0.1 --set parallel.cp=2 --set data.seq_len=524288 \
        --set model.dense_layers=[] \
        --set training.activation_checkpointing=true --set data.val_windows=1 --set training.eval_every=0 \
        --set training.checkpoint_every=0 --set training.log_every=1 --set optim.warmup_steps=2 \
        --set stages.0.steps=6 --set stages.1.steps=3 > "$out/cp2.log" 2>&1; tail -n 8 "$out/cp2.log"
      for r in dp1-64k dp2-64k cp2-512k; do cp "$out/runs/$r/metrics.jsonl" "$out/$r.metrics.jsonl" 2>/dev/null; done ;;
    *) echo "unknown part $part"; status=2 ;;
  esac
done
exit $status
