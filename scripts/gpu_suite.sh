#!/usr/bin/env bash
# The GPU rounds of a release, on one CUDA machine, logs and JSON into OUT_DIR:
#   bash scripts/gpu_suite.sh OUT_DIR check     kernel + gla tests compiled on CUDA, scripts/gpu_check.py
#   bash scripts/gpu_suite.sh OUT_DIR bench     attention and scorer benchmarks
#   bash scripts/gpu_suite.sh OUT_DIR train     training throughput (recipe preset and the paper's shape)
#   bash scripts/gpu_suite.sh OUT_DIR hf        Hugging Face model at 64K, "sdpa" vs "lighthouse"
#   bash scripts/gpu_suite.sh OUT_DIR kernels   kernel tests compiled on CUDA (no extra packages needed)
#   bash scripts/gpu_suite.sh OUT_DIR recipe    the recipe experiment (scripts/recipe.py), one arm per GPU
#   bash scripts/gpu_suite.sh OUT_DIR train1m   a 1M-token step of the paper's shape: the paper's layout (four dense
#                                               layers; minutes per step), then all-Lighthouse with fp32 weights and
#                                               16 block inputs in host memory (docs/benchmarks.md's unmeasured rows)
#   bash scripts/gpu_suite.sh OUT_DIR robustness  the next runs of the robustness matrix, three at a time on GPU 0
#                                               (CORPORA, SEEDS, ARMS, LRS, REPEATS, STREAMS, PARALLEL override; OUT_DIR/robustness.json = the
#                                               repository's docs/results/robustness.json with the new runs merged)
#   bash scripts/gpu_suite.sh OUT_DIR dist      (2+ GPUs) data-parallel scaling at 64K on 1, 2 and 4 GPUs;
#                                               context parallelism at 512K on 2 GPUs and 1M on 4, Lighthouse vs dense
# Parts run in the order given; a failing part does not stop the next. Needs PYTHONPATH=src or an install.
# Checkpoints stay under OUT_DIR; copy it without */checkpoints to keep only logs, metrics and results.
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
    train1m)
      common=(--config configs/paper-530m.toml --seq-lens 1M --attention lighthouse --loss-chunk 65536 --steps 1 --warmup 1)
      timeout 560 python3 -m lighthouse.bench train "${common[@]}" --checkpointing block --param-dtype bfloat16 \
        --out "$out/train-1m-paper-layout.json" > "$out/train-1m-paper-layout.log" 2>&1; tail -n 6 "$out/train-1m-paper-layout.log"
      timeout 300 python3 -m lighthouse.bench train "${common[@]}" --set 'model.dense_layers=[]' --checkpointing block \
        --offload-layers 16 --out "$out/train-1m-fp32-offload.json" > "$out/train-1m-fp32-offload.log" 2>&1
      tail -n 6 "$out/train-1m-fp32-offload.log" ;;
    hf)
      python3 -m lighthouse.bench hf --out "$out/hf.json" > "$out/hf.log" 2>&1; tail -n 12 "$out/hf.log" ;;
    kernels)
      python3 -m pytest -q -p no:cacheprovider tests/test_kernels.py 2>&1 | tee "$out/pytest_cuda.log" | tail -n 3 ;;
    recipe)
      gpus=$(python3 -c 'import torch; print(",".join(map(str, range(torch.cuda.device_count()))))')
      python3 scripts/recipe.py --config configs/recipe-64k.toml --gpus "$gpus" --out "$out/recipe" --deadline 3000 \
        > "$out/recipe.log" 2>&1; tail -n 8 "$out/recipe.log" ;;
    robustness)
      cp docs/results/robustness.json "$out/robustness.json"
      # runs (checkpoints) stay in runs/robustness, outside OUT_DIR: a later call on the same machine resumes them
      python3 scripts/robustness.py --config configs/robustness-32k.toml --out runs/robustness \
        --results "$out/robustness.json" --corpora "${CORPORA:-code}" --seeds "${SEEDS:-1}" \
        --arms "${ARMS:-dense,causal,causal-k2}" --lrs "${LRS:-}" --repeats "${REPEATS:-0}" --set "data.streams=${STREAMS:-1}" \
        --parallel "${PARALLEL:-3}" --deadline "${DEADLINE:-540}" > "$out/robustness.log" 2>&1
      mkdir -p "$out/robustness"; cp -r runs/robustness/logs runs/robustness/evals "$out/robustness/" 2>/dev/null
      tail -n 24 "$out/robustness.log" ;;
    dist)
      n=$(python3 -c 'import torch; print(torch.cuda.device_count())')
      # The recipe model (27.5M, 8 layers); the same 4 sequences of 64K per step on 1 GPU (accumulated), 2 and 4.
      common=(--config configs/recipe-64k.toml --no-progress --set "out_dir=\"$out/runs\"" --set 'data.source="stdlib"'
              --set data.val_windows=2 --set training.eval_every=0 --set training.checkpoint_every=0
              --set training.log_every=5 --set optim.warmup_steps=5 --set training.batch_size=4
              --set training.micro_batch_size=1 --set stages.0.steps=20 --set stages.1.steps=5)
      for g in 1 2 4; do
        [ "$g" -le "$n" ] || continue
        CUDA_VISIBLE_DEVICES=$(seq -s, 0 $((g - 1))) timeout 300 python3 -m torch.distributed.run --standalone \
          --nproc-per-node "$g" -m lighthouse train "${common[@]}" --set name=dp$g-64k > "$out/dp$g.log" 2>&1
        tail -n 4 "$out/dp$g.log"; cp "$out/runs/dp$g-64k/metrics.jsonl" "$out/dp$g-64k.metrics.jsonl" 2>/dev/null
      done
      # One long sequence per step split over the GPUs: Lighthouse in every layer (L=3, p=4, K=1024), then the
      # same model with dense attention, then the paper's layout (4 dense layers); one launch each.
      cp_run() {  # GPUS LENGTH ATTENTION [--set ...]
        local g=$1 len=$2 kind=$3; shift 3
        CUDA_VISIBLE_DEVICES=$(seq -s, 0 $((g - 1))) timeout 420 python3 -m torch.distributed.run --standalone \
          --nproc-per-node "$g" -m lighthouse.bench cp --config configs/recipe-64k.toml --seq-len "$len" \
          --attention "$kind" --activation-checkpointing --out "$out/cp.json" "$@" >> "$out/cp.log" 2>&1
        echo "cp $g GPUs $len $kind $*: exit $?"; grep "^N=" "$out/cp.log" | tail -n 1
      }
      [ "$n" -ge 2 ] && for kind in lighthouse dense; do cp_run 2 512K $kind --set 'model.dense_layers=[]'; done
      if [ "$n" -ge 4 ]; then
        for kind in lighthouse dense; do cp_run 4 1M $kind --set 'model.dense_layers=[]' --steps 2; done
        cp_run 4 1M lighthouse --steps 2
      fi
      free -g | head -n 2; dmesg 2>/dev/null | grep -i -E "killed process|out of memory" | tail -n 3
      python3 -c "import json,sys; from lighthouse.bench.cp import format_table; print(format_table(json.load(open(sys.argv[1]))['rows']))" "$out/cp.json" ;;
    *) echo "unknown part $part"; status=2 ;;
  esac
done
exit $status
