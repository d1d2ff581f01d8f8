#!/usr/bin/env bash
# The GPU runs behind docs/benchmarks.md: correctness on CUDA, then layer and baselines.
# Usage: OUT=results_dir bash benchmarks/run_gpu.sh   (each step time-boxed)
set -u
OUT=${OUT:-bench_out}; mkdir -p "$OUT"
export ESSSM_CACHE_DIR=${ESSSM_CACHE_DIR:-/tmp/esssm_filters}
python -c "import torch, numpy, scipy; print(torch.__version__, torch.cuda.get_device_name())"
timeout 90 python -m pytest -q -p no:cacheprovider tests/test_performance_equivalence.py 2>&1 | tail -3
timeout 170 python -m benchmarks.bench_layer --device cuda --lengths 1024,4096,16384 \
  --model-layers 8 --warmup 2 --repeats 10 --json "$OUT/gpu_layer_fp32.json" > "$OUT/gpu_layer_fp32.txt" 2>&1
timeout 90 python -m benchmarks.bench_layer --device cuda --lengths 4096,16384 --budgets 2,8,32 \
  --model-layers 8 --amp --warmup 2 --repeats 10 --json "$OUT/gpu_layer_bf16.json" > "$OUT/gpu_layer_bf16.txt" 2>&1
timeout 200 python -m benchmarks.bench_baselines --device cuda --layers 8 --lengths 1024,4096,16384 \
  --max-seconds 10 --json "$OUT/gpu_baselines.json" > "$OUT/gpu_baselines.txt" 2>&1
tail -n 30 "$OUT"/*.txt
