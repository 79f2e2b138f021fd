#!/usr/bin/env bash
# The paper's Table 2 over seeds and the Table 3 analogue in one call on one GPU: every model trained at once (one
# process each; see MPS below for whether that pays), cut at $TRAIN_MIN
# minutes, then each evaluated, then the seeds aggregated. Everything lands in $OUT/paper-runs.tgz (one file: a call
# returns at most eight) with a summary in $OUT/summary.txt. Needs the kernels (benchmarks/gpu_kernels.sh first, in
# the same warm machine, or .sd/wheels carried).
# Usage: bash benchmarks/gpu_paper_runs.sh [SEEDS (default "0 1 2")]
# MPS=1 runs the processes under CUDA MPS (started here as root, stopped at the end): without it the processes
# time-slice the GPU, and the 2026-12-04 pilot's eight models together made no more steps than one alone; under MPS
# their kernels can share the SMs. Compare the steps per model in $OUT/summary.txt with the pilot's (534-706 copying
# steps in 5.2 minutes each; one model alone: about 4,060).
set -u
out=${OUT:-./gpu-out}; mkdir -p "$out"
work=./gpu-work; rm -rf "$work"; mkdir -p "$work/copy" "$work/logs" gpu-models
seeds=${1:-0 1 2}; train_min=${TRAIN_MIN:-5.2}; eval_s=${EVAL_S:-170}; n_samples=${N_SAMPLES:-64}
# shellcheck disable=SC1091
source benchmarks/gpu_env.sh > "$work/logs/env.log" 2>&1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$work/gpu.txt"
if [ "${MPS:-0}" = 1 ]; then
  export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps-pipe CUDA_MPS_LOG_DIRECTORY=/tmp/mps-log
  mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
  if nvidia-cuda-mps-control -d; then mps="MPS on"; else mps="MPS could not start"; fi
  echo "$mps" | tee -a "$work/gpu.txt"
fi
for v in mamba1 mamba2; do
  for s in $seeds; do
    name=copy-$v-s$s
    (python3 -m latim_captum.copying.train --variant "$v" --scale paper --device cuda --bf16 --quiet --seed "$s" \
       --max-minutes "$train_min" --out "gpu-models/$name" > "$work/logs/train_$name.log" 2>&1
     timeout "$eval_s" python3 benchmarks/copying.py --variant "$v" --scale paper --device cuda \
       --model "gpu-models/$name" --n-samples "$n_samples" --out "$work/copy/s$s" --quiet \
       > "$work/logs/eval_$name.log" 2>&1
     echo "$name rc=$?" >> "$work/status.txt") &
  done
  (python3 -m latim_captum.alignment.train --variant "$v" --scale paper --device cuda --bf16 --quiet --seed 0 \
     --max-minutes "$train_min" --out "gpu-models/align-$v" > "$work/logs/train_align-$v.log" 2>&1
   echo "train align-$v rc=$?" >> "$work/status.txt") &
done
wait
timeout "$eval_s" python3 benchmarks/alignment.py --scale paper --device cuda --n-samples "$n_samples" \
  --model gpu-models/align-mamba1 gpu-models/align-mamba2 --out "$work/align" --quiet > "$work/logs/eval_align.log" 2>&1
echo "align rc=$?" >> "$work/status.txt"
for v in mamba1 mamba2; do
  python3 benchmarks/copying_seeds.py "$work"/copy/s*/copying-$v-paper.json --out "$work/seeds" \
    > "$work/logs/seeds_$v.log" 2>&1
  echo "seeds $v rc=$?" >> "$work/status.txt"
done
[ "${MPS:-0}" = 1 ] && echo quit | nvidia-cuda-mps-control
for m in gpu-models/*/; do cp "$m/metrics.json" "$work/logs/metrics_$(basename "$m").json" 2>/dev/null; done
steps() { python3 -c "import json,sys; [print(f, json.load(open(f)).get('steps')) for f in sys.argv[1:]]" "$@"; }
{ cat "$work/gpu.txt" "$work/status.txt"; steps "$work"/logs/metrics_*.json
  head -c 3000 "$work"/seeds/*.md 2>/dev/null; } > "$out/summary.txt"
tar czf "$out/paper-runs.tgz" -C "$work" .
cat "$out/summary.txt"
