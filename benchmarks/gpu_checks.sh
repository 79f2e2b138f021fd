#!/usr/bin/env bash
# Every CUDA check of the repo in one call on a bare CUDA machine (see gpu_env.sh), logs under $OUT (or ./gpu-out).
# Usage from the repository root: bash benchmarks/gpu_checks.sh [tests|bench|all|triton|cuda-tests] [seconds for the
# benchmark] (cuda-tests: every CUDA test, in parallel processes)
# (triton: the Triton kernels' CUDA test, one layer by path (benchmarks/kernel_paths.py), then the benchmark of
#  kernel='triton' only)
#   bash benchmarks/gpu_checks.sh train mamba1|mamba2 [ACT] [SEED]   5,000-step copy model as $OUT/<name>.tar.part*
#        (<name> copy-<v>-paper for silu and seed 0, else copy-<v>-paper-<act>-s<seed>; ACT silu|relu|linear)
#   bash benchmarks/gpu_checks.sh copying mamba1|mamba2 DIR   Table 2 on the GPU from a trained model folder (both
#        readings of the rows; for Table 2 over seeds, one call per seed with its own $OUT, then on any machine:
#        python benchmarks/copying_seeds.py <the seeds' copying-<v>-paper.json>)
#   bash benchmarks/gpu_checks.sh train-alignment mamba1|mamba2 [ACT] [SEED]   alignment model (App. B.2 recipe,
#        cut at TRAIN_MIN minutes, 8.2) as $OUT/alignment-<v>-paper-<act>-s<seed>.tar.part* (both train steps:
#        TRAIN_ARGS, more trainer flags, e.g. "--stop-at 9844"; TRAIN_S, the process's limit, 530 s; the folder
#        stays in gpu-models/ and the same line on the warm machine resumes a run cut short, FRESH=1 starts anew)
#   bash benchmarks/gpu_checks.sh alignment DIR [DIR]         Table 3 analogue (AER) from trained alignment folders,
#        cut at TE_S seconds; a second call on the warm machine continues it
#   bash benchmarks/gpu_checks.sh train-eval copy|alignment mamba1|mamba2 ACT SEED [SEED...]   train, then evaluate
#        there: each seed trains in its own process, for TRAIN_MIN minutes (8.0) or the recipe's steps, with nothing
#        else on the GPU; then the evaluations run one after another (copy: Table 2, both readings of the rows;
#        alignment: Table 3; METHODS: a subset, in that order) in what is left of TE_S seconds (540: give the call
#        timeout_s >= TE_S + 40). The reports come back as $OUT/train-eval.tar.xz, each trained folder as
#        $OUT/NAME.tar.part* (WEIGHTS=0: not; cat them | tar x), and weights and reports stay in ./gpu-models/
#        (TRAIN_ARGS: more trainer flags, e.g. "--stop-at 9844" to cut a Table 5 variant at the step where the silu
#        model's TRAIN_MIN cut it, the schedule unchanged)
#        (git-ignored) while the machine is warm: RESUME="copy-mamba1-paper-silu-s1 alignment-mamba2-paper-silu-s0 ..."
#        continues those models' evaluations cut by TE_S, after this call's (a train-eval with no seed only resumes).
#        One seed per call: seeds sharing the GPU time-slice it
#        (the 2026-12-04 pilot: eight models made about the steps of one alone), and the recipe's 5,000 steps take 6.4
#        minutes (Mamba-1) or 4.1-4.8 (Mamba-2; about 7.4 for the first on a bare machine, whose first 500 steps take
#        1.5 minutes longer) alone on an H100. Over seeds, on any machine: python benchmarks/copying_seeds.py (or
#        study_seeds.py) on the reports
#   bash benchmarks/gpu_checks.sh switch DIR [ACT...]   Table 5's models as the paper made them (App. B.3): continue
#        the SiLU model trained in DIR (e.g. gpu-models/copy-mamba2-paper-silu-s1, carried alone) while its conv
#        activation switches to each ACT (relu linear; silu: the continued-training control), the trainer's
#        --switch-from recipe, on the unfused kernels, into gpu-models/<DIR's name with silu -> ACT-cp> (resumable on
#        a warm machine like train; SWITCH_MIN minutes of steps, 4.5, SWITCH_S seconds, 420, per ACT; SWITCH_ARGS
#        more trainer flags); the first
#        finished ACT's folder comes back as $OUT/<name>.tar.part*, as soon as it is saved (what comes back is at most
#        64 MiB in all: one 54 MB model; `fetch NAME` for the others; the training log is in each folder, train.log)
#   bash benchmarks/gpu_checks.sh table5 [TASK:SEED...]   Table 5's Mamba-2 models at paper scale the paper's way
#        (default copy:1 alignment:0): each task's SiLU model, then relu, linear and silu (the SiLU + CP control,
#        <task>-mamba2-paper-silu-cp-s<seed>) continued from it, on --kernels dual (no mamba-ssm); the tasks side by
#        side on the GPU; the same line again on the warm machine goes on where the last call stopped and returns the
#        next finished model (T5_S, T5_ACTS: the switches, ALIGN_STOP, KERNELS)
#   bash benchmarks/gpu_checks.sh fetch NAME   gpu-models/NAME (kept on the warm machine) as $OUT/NAME.tar.part*
#   bash benchmarks/gpu_checks.sh activations copy|alignment DIR_SILU DIR_RELU DIR_LINEAR   Table 5 analogue
#   bash benchmarks/gpu_checks.sh train-profile [copy|alignment] [mamba1|mamba2]   a training step of each conv
#        activation under torch.profiler ($OUT/profile-train-<task>-<v>-<act>.txt; PROFILE_ACTS, PROFILE_S)
#   bash benchmarks/gpu_checks.sh train-retrieval mamba1|mamba2 [SEED]   retrieval model (passkey + FWE, length
#        curriculum, 7.5 minutes of steps) into ./gpu-models/retrieval-<v>-paper-s<seed> (git-ignored, kept while the
#        machine stays warm; run again on a warm machine to resume it for another 7.5 minutes, FRESH=1: anew) and as
#        $OUT/retrieval-<v>-paper-s<seed>.tar.part* (model + trainer_state.pt)
#   bash benchmarks/gpu_checks.sh retrieval DIR [DIR]         retrieval study (Tables 4/6, shares, Figure 3) from
#        trained folders (e.g. gpu-models/retrieval-mamba1-paper-s0 gpu-models/retrieval-mamba2-paper-s0), with the
#        kernels; $OUT/retrieval/retrieval-paper.{md,json} and three PNGs; METHODS="saliency ..." runs a subset
#        (in that order), RETR_MIN the minutes after which no method starts (5.5), RETR_ARGS more options
#   bash benchmarks/gpu_checks.sh onegpu tests|hybrid|speed|large|whole   real scale on one GPU, one part per call
#        (each up to ~9 minutes): the CUDA tests of the hybrid tiles and host-kept traces; benchmarks/hybrid_tiles.py
#        (8 Bamba blocks of 130M width, ref vs tiles per sublayer kind); `latim bench speed` end to end on
#        mamba2/mamba1/bamba (130M widths, fp32 + bf16, N = 2048); the 7B-class shapes' maps (bf16, N = 2048, single
#        query at 8192 / 32768, on 1 and 2 layers of the published widths, extrapolated to the published depth;
#        LARGE_MODELS (mamba2_2.7b, falcon_mamba_7b, bamba_9b: a hybrid gets a third layout, 2 blocks with one
#        attention; one model per call), LARGE_LENGTHS (none: single queries only), LARGE_SINGLE, LARGE_DEPTHS,
#        LARGE_S);
#        `latim bench whole-sequence` (130M Mamba-2, N = 2048); as $OUT/onegpu-<part>.tar.xz
#   bash benchmarks/gpu_checks.sh hidden-attention   the baselines' Mamba-1 hidden attention, eq 15 against the
#        anchored factorisation (benchmarks/hidden_attention.py; HA_LENGTHS, HA_D, HA_ROWS, HA_S)
#   bash benchmarks/gpu_checks.sh scale [tests|check|bench|all]   scaling out on the visible GPUs: tests (test_scaling:
#        layers split between GPU and CPU), check (a 7B-class shape split over 2 GPUs, or GPU + CPU on one, maps
#        against one device) and bench (attribute_dataset throughput of 1 vs 2 (vs 4, vs 8) torchrun ranks on the
#        130M shape, N = SCALE_N or 2048); all three take more than one 10-minute call: give one part per call.
#        Needs accelerate (a wheel in .whl/ on a bare machine: pip download --no-deps -d .whl accelerate)
# A model's fp32 weights (54 MB) and the kernels (56 MB) do not fit one carry: train with the kernels, then evaluate
# in a second call carrying the weights (the evaluation runs on the PyTorch path without them).
# Activation variants: the fused kernels apply SiLU or none, so relu trains with --kernels unfused (the kernels with
# the model's activation between them; KERNELS=off: HF's PyTorch path, far fewer steps in the same minutes), Mamba-2
# linear on the kernels (activation None), Mamba-1 linear with --kernels unfused (mamba-ssm's fused Mamba-1 training
# path always applies SiLU); the trainers check the device forward against the PyTorch one before training either way
# (that reference hides the kernels from transformers 5.17, which calls them on CPU tensors:
# latim_captum.tasks.models.hf_torch_path). relu / linear models are evaluated with the kernels off the PYTHONPATH
# (eval_path).
set -u
what=${1:-all}; bench_s=${2:-300}
out=${OUT:-./gpu-out}; mkdir -p "$out"
# shellcheck disable=SC1091
source benchmarks/gpu_env.sh > "$out/env.log" 2>&1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$out/gpu.txt"
# KERNELS=off|unfused|auto overrides the choice below (latim_captum.tasks.unfused)
# the trainers' kernels for a conv activation the fused kernels cannot apply (ReLU; Mamba-1 without activation): the
# unfused kernels with the model's activation between them (their CUDA test passed for every case on an H100,
# 2026-12-06, in full float32; the trainer checks them against HF's PyTorch path before training), where HF's
# PyTorch path (KERNELS=off) takes 2-4 s a step at the copy task's paper scale
kernel_flags() { # variant act
  if [ -n "${KERNELS:-}" ]; then echo "--kernels $KERNELS"
  elif [ "$2" = relu ] || { [ "$2" = linear ] && [ "$1" = mamba1 ]; }; then echo "--kernels unfused"; fi
}
# the PYTHONPATH an evaluation of a model with this conv activation runs under: HF hands the kernels the config's
# activation name, which they refuse for relu and linear ("activation must be None, silu, or swish") on CUDA, so
# those models are evaluated on HF's PyTorch path, with the kernels off the path
eval_path() { # act
  if [ "$1" = silu ]; then echo "${PYTHONPATH:-}"
  else echo "${PYTHONPATH:-}" | tr ':' '\n' | grep -v kwsite | paste -sd:; fi
}
# resumable_train NAME LIMIT_S CMD...: run a trainer (CMD, without --resume / --out) into gpu-models/NAME, kept while
# the machine is warm: a folder with a trainer_state.pt (a run cut by its minutes or by LIMIT_S, whose SIGTERM ends
# the run after its step, saved) is resumed, as if it had not stopped, unless FRESH=1; the folder is replaced only by
# a run that saved (trainer_state.pt, written last), so a cut one leaves the last good model in place
# send_model NAME: gpu-models/NAME as $OUT/NAME.tar.part* (few files come back, each at most 16 MB: 15 MB parts of one
# tar, cat them | tar x), without the optimiser's state (twice the weights), which stays here for a resume
# switched_name SOURCE ACT: the folder of SOURCE's model continued with ACT (switch, table5): silu -> ACT-cp
# (copy-mamba2-paper-silu-s1 -> copy-mamba2-paper-relu-cp-s1; the SiLU control silu-cp), a name without "silu"
# (copy-mamba2-paper) gets a suffix
switched_name() { local name=${1/silu/$2-cp}; [ "$name" = "$1" ] && name="$1-$2-cp"; echo "$name"; }
send_model() { tar c --exclude trainer_state.pt -C gpu-models "$1" | split -d -b 15M - "$out/$1.tar.part"; }
resumable_train() {
  local name=$1 limit=$2; shift 2
  local dir="gpu-models/$name" resume=()
  mkdir -p gpu-models; rm -rf "$dir.new"
  if [ "${FRESH:-0}" = 1 ]; then rm -rf "$dir"; elif [ -f "$dir/trainer_state.pt" ]; then resume=(--resume "$dir"); fi
  timeout "$limit" "$@" "${resume[@]}" --out "$dir.new" > "$out/train_$name.log" 2>&1
  local rc=$?
  if [ -f "$dir.new/trainer_state.pt" ]; then rm -rf "$dir" && mv "$dir.new" "$dir"; fi
  echo "train $name rc=$rc ${resume[*]}"
}
if [ "$what" = train ] || [ "$what" = train-alignment ]; then
  v=$2; act=${3:-silu}; seed=${4:-0}
  if [ "$what" = train ]; then
    module=latim_captum.copying.train
    name="copy-$v-paper"; [ "$act" = silu ] && [ "$seed" = 0 ] || name="copy-$v-paper-$act-s$seed"
  else
    module=latim_captum.alignment.train; name="alignment-$v-paper-$act-s$seed"
  fi
  # TRAIN_MIN (8.2) minutes of steps; TRAIN_S (530) seconds for the process (a bare machine first spends ~40 s
  # unpacking the kernels, and each start ~50 s drawing the task's strings and checking the kernels)
  # shellcheck disable=SC2046,SC2086
  resumable_train "$name" "${TRAIN_S:-530}" python3 -m "$module" --variant "$v" --scale paper --device cuda --bf16 \
    --quiet --act "$act" --seed "$seed" $(kernel_flags "$v" "$act") --max-minutes "${TRAIN_MIN:-8.2}" ${TRAIN_ARGS:-}
  dir="gpu-models/$name"
  head -14 "$dir/metrics.json" 2>/dev/null || tail -3 "$out/train_$name.log"
  [ -d "$dir" ] && send_model "$name"
  exit 0
fi
if [ "$what" = switch ]; then
  src=${2%/}; shift 2; acts=("$@"); [ ${#acts[@]} -gt 0 ] || acts=(relu linear)
  meta=$(python3 -c "import json,sys; m=json.load(open(sys.argv[1])); print(m.get('task_name', 'copy'), m['variant'])" \
    "$src/metrics.json") || { echo "switch: no trained model at $src"; exit 1; }
  read -r task v <<< "$meta"
  module=latim_captum.copying.train; [ "$task" = alignment ] && module=latim_captum.alignment.train
  # mamba-ssm's deterministic mode: one configuration per Triton kernel, not about ten autotuned, and deterministic
  # reductions in the backward pass. Autotuning compiled for ~7.5 minutes on a fresh H100 (float32 for the device
  # check, then bf16) before the first step (benchmarks/results/table5-copy-train-attempts-h100-2026-12-06.md);
  # read at mamba-ssm's import, so set here, before the trainer starts
  export MAMBA_DETERMINISTIC=${MAMBA_DETERMINISTIC:-1}
  # at most 64 MiB comes back (and 8 files): the first finished model (4 parts) as soon as it is saved, so a call cut
  # by its limit still returns the model made before it (gpu.txt is printed above)
  tail -2 "$out/env.log"; rm -f "$out/env.log" "$out/gpu.txt"
  sent=0
  for act in "${acts[@]}"; do
    name=$(switched_name "$(basename "$src")" "$act")
    [ "${FRESH:-0}" = 1 ] && rm -f "gpu-models/$name.log"
    # shellcheck disable=SC2086
    resumable_train "$name" "${SWITCH_S:-420}" python3 -m "$module" --variant "$v" --switch-from "$src" --act "$act" \
      --device cuda --bf16 --quiet --kernels unfused --max-minutes "${SWITCH_MIN:-4.5}" ${SWITCH_ARGS:-}
    grep -E "^step|error|device check" "$out/train_$name.log" | tail -5
    grep -E '"(steps|minutes|eval_token_acc|eval_exact_match|alpha)"' "gpu-models/$name/metrics.json" 2>/dev/null
    # the run's log, every call's that trained it, travels in its folder (train.log)
    cat "$out/train_$name.log" >> "gpu-models/$name.log" && rm "$out/train_$name.log"
    [ -d "gpu-models/$name" ] || continue
    cp "gpu-models/$name.log" "gpu-models/$name/train.log"
    # finished: the recipe's steps made (a run cut by its minutes stays here, for the same line to resume it)
    if python3 -c "import json,sys; m=json.load(open(sys.argv[1])); sys.exit(m['steps'] < m['schedule_steps'])" \
      "gpu-models/$name/metrics.json" && [ "$sent" -lt 1 ]; then send_model "$name"; sent=$((sent + 1)); fi
  done
  ls "$out"
  exit 0
fi
if [ "$what" = table5 ]; then
  # Table 5's models at paper scale, Mamba-2, the paper's way: per TASK:SEED, the SiLU model (the recipe; alignment
  # cut at ALIGN_STOP steps, 9844, where the Table 3 model's minutes cut it) then each T5_ACTS (relu linear silu)
  # continued from it (--switch-from). Every call of the same line goes on where the last stopped (models kept in
  # gpu-models/ while the machine is warm, cut runs resumed); the tasks' chains run side by side on the GPU until
  # T5_S seconds (540) from the start; then the first finished model not sent yet comes back (at most 64 MiB comes
  # back from a call: one 54 MB model; on 2026-12-06 a second one's parts were left out), the rest
  # with the next call or `fetch NAME`. KERNELS (dual): Mamba-2's quadratic form, no mamba-ssm needed. A smoke run
  # on a CPU: T5_SCALE=tiny T5_DEVICE=cpu T5_BF16= ALIGN_STOP=6 T5_SRC_ARGS="--steps 8 --eval-every 4"
  # T5_SWITCH_ARGS="--steps 8 --warmup 2 --decay 3 --eval-every 4" bash benchmarks/gpu_checks.sh table5
  shift; chains=("$@"); [ ${#chains[@]} -gt 0 ] || chains=(copy:1 alignment:0)
  end=$(( $(date +%s) + ${T5_S:-540} ))
  tail -1 "$out/env.log"; rm -f "$out/env.log" "$out/gpu.txt"
  finished() { # the recipe's steps made, or its --stop-at (a run cut by its minutes is not)
    python3 -c "import json,sys; m, a = (json.load(open(f'gpu-models/{sys.argv[1]}/{f}.json')) for f in ('metrics', \
      'training_args')); sys.exit(m['steps'] not in (m['schedule_steps'], a.get('stop_at')))" "$1" 2>/dev/null; }
  t5_train() { # NAME CMD...: resumable, until the deadline (45 s kept for the last evaluation and the save)
    local name=$1 left=$(( end - $(date +%s) )); shift
    finished "$name" && return 0
    [ "$left" -gt 90 ] || return 1
    resumable_train "$name" $(( left - 10 )) "$@" --max-minutes "$(python3 -c "print(($left - 45) / 60)")"
    cat "$out/train_$name.log" >> "gpu-models/$name.log" && rm "$out/train_$name.log"
    [ -d "gpu-models/$name" ] && cp "gpu-models/$name.log" "gpu-models/$name/train.log"
    grep -E "^step|error|device check" "gpu-models/$name.log" | tail -3
    finished "$name"
  }
  source_name() { echo "${1%%:*}-mamba2-${T5_SCALE:-paper}-silu-s${1##*:}"; }  # TASK:SEED -> its SiLU model
  for chain in "${chains[@]}"; do
    task=${chain%%:*}; seed=${chain##*:}
    (
      module=latim_captum.copying.train; stop=()
      [ "$task" = alignment ] && module=latim_captum.alignment.train && stop=(--stop-at "${ALIGN_STOP:-9844}")
      # shellcheck disable=SC2206
      common=(--variant mamba2 --device "${T5_DEVICE:-cuda}" ${T5_BF16---bf16} --quiet --kernels "${KERNELS:-dual}")
      silu=$(source_name "$chain")
      # shellcheck disable=SC2086
      t5_train "$silu" python3 -m "$module" "${common[@]}" --scale "${T5_SCALE:-paper}" --act silu --seed "$seed" \
        "${stop[@]}" ${T5_SRC_ARGS:-} || exit 0
      for act in ${T5_ACTS:-relu linear silu}; do
        # shellcheck disable=SC2086
        t5_train "$(switched_name "$silu" "$act")" python3 -m "$module" "${common[@]}" --switch-from "gpu-models/$silu" \
          --act "$act" ${T5_SWITCH_ARGS:-} || exit 0
      done
    ) &
  done
  wait
  sent=0
  for chain in "${chains[@]}"; do
    for act in source ${T5_ACTS:-relu linear silu}; do  # the source, then each switch
      name=$(source_name "$chain"); [ "$act" = source ] || name=$(switched_name "$name" "$act")
      [ -f "gpu-models/$name/metrics.json" ] || { echo "$name: not made yet"; continue; }
      python3 -c "import json,sys; m=json.load(open(sys.argv[1])); print(sys.argv[2] + ':', *(f'{k} {m.get(k)}' \
        for k in ('steps', 'schedule_steps', 'minutes', 'eval_exact_match', 'eval_token_acc')), 'alpha', \
        (m.get('switch') or {}).get('alpha'), sep=' ')" "gpu-models/$name/metrics.json" "$name"
      # trained on this machine (its running log beside it; a carried source folder is not sent back), not yet sent
      if finished "$name" && [ -f "gpu-models/$name.log" ] && [ ! -f "gpu-models/$name.sent" ] && [ "$sent" -lt 1 ]
      then
        send_model "$name" && touch "gpu-models/$name.sent"; sent=$((sent + 1))
      fi
    done
  done
  ls "$out"
  exit 0
fi
if [ "$what" = fetch ]; then
  [ -d "gpu-models/$2" ] || { echo "fetch: no gpu-models/$2 on this machine"; ls gpu-models; exit 1; }
  send_model "$2"; ls -l "$out"; exit 0
fi
if [ "$what" = train-eval ]; then
  task=$2; v=$3; act=$4; shift 4
  case "$task" in
    copy) module=latim_captum.copying.train; evaluate=(benchmarks/copying.py --variant "$v") ;;
    alignment) module=latim_captum.alignment.train; evaluate=(benchmarks/alignment.py) ;;
    *) echo "train-eval: task copy or alignment, not '$task'"; exit 2 ;;
  esac
  mkdir -p gpu-models "$out/train-eval"
  seed_name() { echo "$task-$v-${TE_SCALE:-paper}-$act-s$1"; }  # a seed's folder in gpu-models/ and its files in $OUT
  # TE_SCALE / TE_DEVICE / TE_BF16 (default --bf16; set it empty for none) only for a smoke run of this step on a
  # CPU: TE_SCALE=tiny TE_DEVICE=cpu TE_BF16= bash benchmarks/gpu_checks.sh train-eval copy mamba2 silu 0 1 (like
  # every step, it sources gpu_env.sh, which installs this checkout, editable, into the python3 on the PATH)
  end=$(( $(date +%s) + ${TE_S:-540} - 20 ))  # 20 s kept for the archive
  # the trainings run alone: beside an evaluation on the same GPU, the paper-scale Mamba-1 made 9.6 steps/s against
  # 13.2 alone (H100, 2026-12-06), so TRAIN_MIN cut it at 4,247 of the recipe's 5,000 steps
  for seed in "$@"; do
    name=$(seed_name "$seed")
    rm -rf "gpu-models/$name" "gpu-models/$name.report"  # what is evaluated below is this call's model or none
    (
      # shellcheck disable=SC2046,SC2086
      timeout $(( end - $(date +%s) )) python3 -m "$module" --variant "$v" --scale "${TE_SCALE:-paper}" \
        --device "${TE_DEVICE:-cuda}" ${TE_BF16---bf16} --quiet --act "$act" --seed "$seed" \
        $(kernel_flags "$v" "$act") --max-minutes "${TRAIN_MIN:-8.0}" ${TRAIN_ARGS:-} --out "gpu-models/$name" \
        > "$out/train-eval/train_$name.log" 2>&1
      echo "train $name rc=$? $(head -c 300 "gpu-models/$name/metrics.json" 2>/dev/null | tr '\n' ' ')"
      cp "gpu-models/$name/metrics.json" "$out/train-eval/train_$name.json" 2>/dev/null
    ) &
  done
  wait
  # then the evaluations, one after another in what is left of TE_S: this call's seeds first, then RESUME="NAME ...",
  # models of an earlier call on this warm machine whose evaluation TE_S cut (latim bench copying|alignment --resume:
  # only the methods its report lacks), into $out/train-eval/NAME-resumed. Side by side they time-slice the GPU: on an
  # H100 (2026-12-06) a resumed MambaLRP took 48 s against 22 s alone, and the new seed's evaluation beside it wrote
  # no report in 122 s
  for seed in "$@"; do
    name=$(seed_name "$seed")
    [ -f "gpu-models/$name/metrics.json" ] || { echo "evaluate $name: no trained model"; continue; }
    left=$(( end - $(date +%s) ))
    if [ "$left" -lt 10 ]; then echo "evaluate $name: no time left"; continue; fi
    # shellcheck disable=SC2086
    PYTHONPATH=$(eval_path "$act") timeout "$left" python3 "${evaluate[@]}" --scale "${TE_SCALE:-paper}" \
      --device "${TE_DEVICE:-cuda}" \
      --model "gpu-models/$name" --out "$out/train-eval/$name" --quiet ${METHODS:+--methods $METHODS} \
      > "$out/train-eval/eval_$name.log" 2>&1
    echo "evaluate $name rc=$? in $(( $(date +%s) + left - end )) s"
    # kept while the machine is warm, for RESUME in the next call
    rm -rf "gpu-models/$name.report" && cp -r "$out/train-eval/$name" "gpu-models/$name.report"
  done
  for name in ${RESUME:-}; do
    rtask=${name%%-*}; rv=${name#"$rtask"-}; rv=${rv%%-*}; ract=${name%-s*}; ract=${ract##*-}
    case "$rtask" in
      copy) stem="copying-$rv-${TE_SCALE:-paper}"; script=(benchmarks/copying.py --variant "$rv") ;;
      alignment) stem="alignment-$rv-${TE_SCALE:-paper}"; script=(benchmarks/alignment.py) ;;
      *) echo "resume $name: a copy-* or alignment-* model, not '$rtask'"; continue ;;
    esac
    [ -f "gpu-models/$name/config.json" ] || { echo "resume $name: no model in gpu-models/"; continue; }
    left=$(( end - $(date +%s) ))
    if [ "$left" -lt 10 ]; then echo "resume $name: no time left"; continue; fi
    # a cut evaluation that wrote no report yet (it writes one after the decomposition errors) starts afresh
    resume=(); [ -f "gpu-models/$name.report/$stem.json" ] && resume=(--resume "gpu-models/$name.report/$stem.json")
    # shellcheck disable=SC2086
    PYTHONPATH=$(eval_path "$ract") timeout "$left" python3 "${script[@]}" \
      --scale "${TE_SCALE:-paper}" --device "${TE_DEVICE:-cuda}" --model "gpu-models/$name" "${resume[@]}" \
      --out "$out/train-eval/$name-resumed" --quiet ${METHODS:+--methods $METHODS} \
      > "$out/train-eval/eval_$name-resumed.log" 2>&1
    echo "resume $name rc=$? (${resume[*]:-no report: from the start})"
    mkdir -p "gpu-models/$name.report"
    cp "$out/train-eval/$name-resumed/$stem."* "gpu-models/$name.report/" 2>/dev/null
  done
  # few files come back: every report and log in one archive; WEIGHTS=1 (the default) also returns each trained
  # folder as 15 MB parts of a tar (send_model: cat them | tar x), so a cut evaluation can be resumed anywhere (8
  # files come back in all: one seed's paper-scale weights are 4 parts; its trainer_state.pt, twice that, stays)
  tar cJf "$out/train-eval.tar.xz" -C "$out" train-eval && rm -rf "$out/train-eval"
  if [ "${WEIGHTS:-1}" = 1 ]; then
    for seed in "$@"; do
      name=$(seed_name "$seed")
      [ -d "gpu-models/$name" ] && send_model "$name"
    done
  fi
  exit 0
fi
if [ "$what" = train-retrieval ]; then
  v=$2; seed=${3:-0}; name="retrieval-$v-paper-s$seed"; dir="gpu-models/$name"
  resumable_train "$name" 560 python3 -m latim_captum.retrieval.train --variant "$v" --scale paper --device cuda \
    --bf16 --quiet --seed "$seed" --max-minutes 7.5
  head -24 "$dir/metrics.json" 2>/dev/null || tail -5 "$out/train_$name.log"
  tar c -C gpu-models "$name" | split -d -b 15M - "$out/$name.tar.part"
  exit 0
fi
if [ "$what" = retrieval ]; then
  shift
  # shellcheck disable=SC2086  # METHODS: a space-separated subset of the study's methods (default: all)
  # RETR_MIN: minutes after which no further method starts; RETR_ARGS: more options (e.g. "--n-attr 16")
  timeout "${RETR_S:-560}" python3 benchmarks/retrieval.py --scale paper --device cuda --model "$@" \
    --out "$out/retrieval" --quiet --max-minutes "${RETR_MIN:-5.5}" ${METHODS:+--methods $METHODS} ${RETR_ARGS:-} \
    > "$out/retrieval.log" 2>&1
  echo "retrieval rc=$?"; head -60 "$out"/retrieval/retrieval-*paper.md 2>/dev/null || tail -5 "$out/retrieval.log"
  exit 0
fi
if [ "$what" = alignment ]; then
  # Table 3 of trained folders (gpu-models/alignment-<v>-paper-<act>-s<seed>, kept on the warm machine by train-eval)
  # in at most TE_S seconds (540), keeping the rows any earlier evaluation of them finished: this step's own report of
  # the same folders if a call of it was cut, else each folder's train-eval report (DIR.report/)
  shift
  dirs=(); for d in "$@"; do dirs+=("${d%/}"); done; set -- "${dirs[@]}"  # DIR/ would look for DIR/.report
  kept="gpu-models/$(for d in "$@"; do basename "$d"; done | sort | paste -sd+).table3"
  resume=(); for f in "$kept"/alignment-*.json; do [ -f "$f" ] && resume=("$f"); done
  if [ ${#resume[@]} = 0 ]; then
    for d in "$@"; do for f in "$d.report"/alignment-*.json; do [ -f "$f" ] && resume+=("$f"); done; done
  fi
  rargs=(); [ ${#resume[@]} -gt 0 ] && rargs=(--resume "${resume[@]}")
  # shellcheck disable=SC2086
  timeout "${TE_S:-540}" python3 benchmarks/alignment.py --scale "${TE_SCALE:-paper}" --device "${TE_DEVICE:-cuda}" \
    --model "$@" "${rargs[@]}" --out "$out/align" --quiet ${METHODS:+--methods $METHODS} > "$out/alignment.log" 2>&1
  echo "alignment rc=$? (resumed: ${resume[*]:-nothing})"
  mkdir -p "$kept" && cp "$out"/align/alignment-*.* "$kept/" 2>/dev/null
  head -40 "$out"/align/alignment-*.md 2>/dev/null || tail -5 "$out/alignment.log"
  exit 0
fi
if [ "$what" = train-profile ]; then
  # where a training step of each conv activation goes (benchmarks/profile_training.py, one process per activation,
  # the trainers' own kernel choice): on an H100 (2026-12-06) the paper-scale Mamba-2 copy model without activation
  # (fused kernels) made ~6 steps/s on a fresh machine and ReLU (unfused kernels) ~4 on a warm one, against SiLU's
  # 11 and 17-20
  task=${2:-copy}; v=${3:-mamba2}; shift $(( $# < 3 ? $# : 3 ))
  for act in ${PROFILE_ACTS:-silu linear relu}; do
    # shellcheck disable=SC2046
    timeout "${PROFILE_S:-170}" python3 benchmarks/profile_training.py --task "$task" -- --variant "$v" --scale paper \
      --device cuda --bf16 --act "$act" $(kernel_flags "$v" "$act") > "$out/profile-train-$task-$v-$act.txt" 2>&1
    echo "profile $act rc=$?"; grep -m2 "per step" "$out/profile-train-$task-$v-$act.txt"
  done
  exit 0
fi
if [ "$what" = activations ]; then
  task=$2; shift 2
  # cut at TE_S seconds (540) so that a slow run still returns its log within a call's 10 minutes
  PYTHONPATH=$(eval_path relu) timeout "${TE_S:-540}" python3 benchmarks/activations.py --task "$task" --scale paper \
    --device cuda --models "$@" --out "$out/act" --quiet > "$out/activations.log" 2>&1
  echo "activations rc=$?"; head -30 "$out"/act/activations-*.md 2>/dev/null || tail -5 "$out/activations.log"
  exit 0
fi
if [ "$what" = onegpu ]; then
  # one part per call: the first run of all five in one call (2026-12-04) gave each too little time (Mamba-2's
  # kernels alone autotune for ~30 s per dtype), so three parts ended on their limits
  part=${2:-all}; want() { [ "$part" = "$1" ] || [ "$part" = all ]; }
  mkdir -p "$out/onegpu"
  if want tests; then
    timeout 300 python3 -m pytest -q -rA --tb=short -p no:cacheprovider -m cuda tests/test_sublayer_tiles.py \
      tests/test_host_trace.py "tests/test_triton_tile.py::test_triton_backend_on_hybrids_on_cuda" \
      > "$out/onegpu/test_cuda.log" 2>&1
    echo "hybrid tiles, host traces, Triton on hybrids rc=$? $(tail -1 "$out/onegpu/test_cuda.log")"
  fi
  if want hybrid; then
    timeout "${HYBRID_S:-500}" python3 benchmarks/hybrid_tiles.py --device cuda --d-model 768 --layers 8 --attn-every 4 \
      --lengths 1024 2048 --backends fast triton --out "$out/onegpu/hybrid-tiles.md" > "$out/onegpu/hybrid_tiles.log" 2>&1
    echo "hybrid_tiles rc=$?"; cat "$out/onegpu/hybrid-tiles.md" 2>/dev/null || tail -5 "$out/onegpu/hybrid_tiles.log"
  fi
  if want speed; then  # SPEED_MODELS=mamba2,mamba1,bamba by default: ~150 s per model and dtype
    timeout 540 python3 benchmarks/speed.py --models "${SPEED_MODELS:-mamba2,mamba1,bamba}" --lengths 2048 \
      --single-lengths 2048 --total-budget "${SPEED_S:-480}" --out "$out/onegpu/speed-130m" \
      > "$out/onegpu/speed-130m.log" 2>&1
    echo "speed 130m rc=$?"; head -12 "$out/onegpu/speed-130m/speed.md" 2>/dev/null
  fi
  if want large; then
    # LARGE_DEPTHS: the layer counts each model is built with (widths kept), times extrapolated to the published
    # depth; "none" builds the published depth (a 7B shape's single query at N = 8192 then takes ~10 minutes: one
    # ALTI layer of rows ≤ q per layer, 63 of them, and 32768 takes hours)
    depths=(); [ "${LARGE_DEPTHS:-1,2}" = none ] || depths=(--depths "${LARGE_DEPTHS:-1,2}")
    timeout "${LARGE_S:-500}" python3 benchmarks/speed.py --models "${LARGE_MODELS:-mamba2_2.7b,falcon_mamba_7b}" \
      --dtypes bf16 --lengths "${LARGE_LENGTHS:-2048,8192}" --single-lengths "${LARGE_SINGLE:-8192,32768}" \
      ${depths[@]+"${depths[@]}"} --ref-max-n 0 --lig-max-n 0 --no-end-to-end --point-budget 300 \
      --total-budget "$(( ${LARGE_S:-500} - 40 ))" --out "$out/onegpu/speed-large" > "$out/onegpu/speed-large.log" 2>&1
    echo "speed large rc=$?"; tail -n +14 "$out/onegpu/speed-large/speed.md" 2>/dev/null | head -20
  fi
  if want whole; then
    timeout 540 python3 -m latim_captum.cli bench whole-sequence --device cuda --model mamba2 --tokens 2048 \
      --method-seconds 90 --out "$out/onegpu/whole-mamba2" > "$out/onegpu/whole.log" 2>&1
    echo "whole-sequence rc=$?"; cat "$out/onegpu/whole-mamba2/whole-sequence.md" 2>/dev/null || tail -5 "$out/onegpu/whole.log"
  fi
  tar cJf "$out/onegpu-$part.tar.xz" -C "$out" onegpu && rm -rf "$out/onegpu"
  exit 0
fi
if [ "$what" = scale ]; then
  part=${2:-all}; gpus=$(nvidia-smi -L | wc -l)
  want() { [ "$part" = "$1" ] || [ "$part" = all ]; }
  if want tests; then
    timeout "${TEST_S:-420}" python3 -m pytest -q -rA --tb=short -p no:cacheprovider tests/test_scaling.py \
      > "$out/test_scaling.log" 2>&1
    echo "test_scaling rc=$? $(tail -1 "$out/test_scaling.log")"
  fi
  split=cuda:0,cpu; [ "$gpus" -ge 2 ] && split=cuda:0,cuda:1
  if want check; then
    for v in mamba1 mamba2; do
      timeout "${CHECK_S:-280}" python3 benchmarks/sharded_check.py --model "$v" --shape 7b \
        --tokens "${CHECK_N:-256}" --split "$split" --out "$out/scale" > "$out/sharded_$v.log" 2>&1
      echo "sharded_check $v 7b $split rc=$? $(tail -1 "$out/sharded_$v.log")"
    done
  fi
  procs="1"; for k in 2 4 8; do [ "$gpus" -ge "$k" ] && procs="$procs $k"; done
  if want bench; then
    for v in mamba1 mamba2; do
      # shellcheck disable=SC2086
      timeout "${BENCH_S:-280}" python3 benchmarks/attribute_dataset.py --model "$v" --procs $procs \
        --examples "${SCALE_EXAMPLES:-32}" --tokens "${SCALE_N:-2048}" --device cuda \
        --backend "${SCALE_BACKEND:-auto}" --out "$out/scale/$v" > "$out/scale_$v.log" 2>&1
      echo "attribute_dataset $v procs $procs rc=$?"; tail -8 "$out/scale_$v.log"
    done
  fi
  exit 0
fi
if [ "$what" = hidden-attention ]; then
  # the baselines' Mamba-1 hidden attention, eq 15 against anchored (benchmarks/hidden_attention.py); the one-layer
  # timing holds [rows, N, d, R] for eq 15 (with its float64 exponents: 12 bytes an entry), so few rows on the GPU
  # shellcheck disable=SC2086
  timeout "${HA_S:-500}" python3 benchmarks/hidden_attention.py --device cuda --lengths ${HA_LENGTHS:-512 1024 2048} \
    --d-model "${HA_D:-768}" --rows "${HA_ROWS:-16}" --out "$out/hidden-attention" > "$out/hidden_attention.log" 2>&1
  echo "hidden_attention rc=$?"
  cat "$out/hidden-attention/hidden-attention-cuda.md" 2>/dev/null || tail -5 "$out/hidden_attention.log"
  exit 0
fi
if [ "$what" = copying ]; then
  # shellcheck disable=SC2086  # METHODS: a space-separated subset of the methods, in that order
  python3 benchmarks/copying.py --variant "$2" --scale paper --device cuda --model "$3" --out "$out/copy" --quiet \
    ${METHODS:+--methods $METHODS} ${COPY_ARGS:-} > "$out/copy_$2.log" 2>&1
  echo "copying $2 rc=$?"; head -25 "$out/copy/copying-$2-paper.md" 2>/dev/null
  exit 0
fi
if [ "$what" = cuda-tests ]; then
  # every CUDA test at once, in parallel processes (one GPU has room for all: ~3 min instead of ~12 in turn); one
  # summary line per selection, then every log in one file ($out/cuda-tests.txt)
  i=0
  for sel in real_widths single_query "reference and mamba1 and not ragged" "reference and mamba1_ragged" \
      "reference and mamba2 and not ragged" "reference and mamba2_ragged" \
      "not real_widths and not single_query and not reference"; do
    (timeout "${TEST_S:-420}" python3 -m pytest -q -rA --tb=short -p no:cacheprovider -m cuda \
      tests/test_triton_tile.py -k "$sel" > "$out/t$i.log" 2>&1
     echo "test_triton_tile -k '$sel' rc=$? $(tail -1 "$out/t$i.log")" > "$out/t$i.rc") &
    i=$((i + 1))
  done
  for f in tests/test_fast_cuda.py tests/test_captum_attr.py tests/test_mamba_ssm_cuda.py tests/test_copying_cuda.py \
      tests/test_sublayer_tiles.py tests/test_host_trace.py tests/test_unfused_cuda.py; do
    # rc read before any command substitution: $(basename ...) would reset $? to 0
    (timeout "${TEST_S:-420}" python3 -m pytest -q -rA --tb=short -p no:cacheprovider -m cuda "$f" \
      > "$out/t$i.log" 2>&1
     rc=$?; echo "$(basename "$f") rc=$rc $(tail -1 "$out/t$i.log")" > "$out/t$i.rc") &
    i=$((i + 1))
  done
  wait
  cat "$out"/t*.rc | tee "$out/cuda-tests.txt"
  for log in "$out"/t*.log; do echo "=== $log"; cat "$log"; done >> "$out/cuda-tests.txt"
  rm -f "$out"/t*.log "$out"/t*.rc
  exit 0
fi
if [ "$what" = triton ]; then
  # one selection at a time, each with its own limit: compiling every case of one model takes minutes, cold
  for sel in real_widths single_query "reference and mamba1 and not ragged" "reference and mamba1_ragged" \
      "reference and mamba2 and not ragged" "reference and mamba2_ragged"; do
    timeout "${TEST_S:-150}" python3 -m pytest -q -s -rA --tb=short -p no:cacheprovider -m cuda \
      tests/test_triton_tile.py -k "$sel" >> "$out/test_triton_tile.log" 2>&1
    echo "test_triton_tile -k '$sel' rc=$? $(tail -1 "$out/test_triton_tile.log")"
  done
  timeout "${PATHS_S:-150}" python3 benchmarks/kernel_paths.py --lengths "${PATHS_N:-512,2048}" --out "$out/paths" \
    > "$out/paths.log" 2>&1
  echo "kernel_paths rc=$?"; cat "$out/paths/kernel_paths.md" 2>/dev/null || tail -5 "$out/paths.log"
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
    timeout 240 python3 -m pytest -q -s -rA --tb=short -p no:cacheprovider -m cuda "$f" > "$out/$name.log" 2>&1
    echo "$name rc=$? $(tail -1 "$out/$name.log")"
  done
fi
if [ "$what" != tests ]; then
  timeout "$((bench_s + 60))" python3 benchmarks/speed.py --out "$out/bench" --total-budget "$bench_s" \
    > "$out/speed.log" 2>&1
  echo "speed rc=$?"; head -40 "$out/bench/speed.md" 2>/dev/null
fi
