#!/usr/bin/env bash
# Every CUDA check of the repo in one call on a bare CUDA machine (see gpu_env.sh), logs under $OUT (or ./gpu-out).
# Usage from the repository root: bash benchmarks/gpu_checks.sh [tests|bench|all|triton] [seconds for the benchmark]
# (triton: the fused kernel's CUDA test, then the benchmark of kernel='triton' only)
set -u
what=${1:-all}; bench_s=${2:-300}
out=${OUT:-./gpu-out}; mkdir -p "$out"
# shellcheck disable=SC1091
source benchmarks/gpu_env.sh > "$out/env.log" 2>&1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$out/gpu.txt"
if [ "$what" = triton ]; then
  timeout 400 python3 -m pytest -q -rA --tb=short -p no:cacheprovider -m cuda tests/test_triton_tile.py \
    > "$out/test_triton_tile.log" 2>&1
  echo "test_triton_tile rc=$? $(tail -1 "$out/test_triton_tile.log")"
  timeout "$((bench_s + 120))" python3 benchmarks/speed.py --kernel triton --single-lengths none \
    --out "$out/bench_triton" --total-budget "$bench_s" > "$out/speed_triton.log" 2>&1
  echo "speed triton rc=$?"; head -30 "$out/bench_triton/speed.md" 2>/dev/null
  exit 0
fi
if [ "$what" != bench ]; then
  # one file per run, full reports (-rA) and short tracebacks, so a failure is readable from the log alone
  for f in tests/test_captum_attr.py tests/test_fast_cuda.py tests/test_triton_tile.py tests/test_mamba_ssm_cuda.py \
      tests/test_copying_cuda.py; do
    name=$(basename "$f" .py)
    timeout 240 python3 -m pytest -q -rA --tb=short -p no:cacheprovider -m cuda "$f" > "$out/$name.log" 2>&1
    echo "$name rc=$? $(tail -1 "$out/$name.log")"
  done
fi
if [ "$what" != tests ]; then
  timeout "$((bench_s + 60))" python3 benchmarks/speed.py --out "$out/bench" --total-budget "$bench_s" \
    > "$out/speed.log" 2>&1
  echo "speed rc=$?"; head -40 "$out/bench/speed.md" 2>/dev/null
fi
