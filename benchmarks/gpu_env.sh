#!/usr/bin/env bash
# Prepare a bare CUDA machine (torch + transformers preinstalled, no network) to run our GPU tests and benchmarks.
# Source it from the repository root: `source benchmarks/gpu_env.sh`.
#   .sd/wheels/site.tar.xz.part*    mamba-ssm + causal-conv1d built by ../shared/tools/mamba-kernels.sh, unpacked from
#                                   their wheels with stripped .so files (56 MiB: fits the 64 MiB carry with .whl)
#   .whl/*.whl                      pure-Python wheels missing there (captum, inseq, ...)
# unpacked once per machine: a second shell of the same call (an evaluation beside a training) must not rewrite the
# .so files a running process has mapped
if [ -d .sd/wheels ]; then
  { [ -d /tmp/kwsite/mamba_ssm ] || { mkdir -p /tmp/kwsite && cat .sd/wheels/site.tar.xz.part* | xz -d -T0 \
    | tar x -C /tmp/kwsite; }; } && export PYTHONPATH=/tmp/kwsite${PYTHONPATH:+:$PYTHONPATH} \
    && python3 -c "import mamba_ssm, causal_conv1d; print('mamba_ssm', mamba_ssm.__version__)"
fi
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
python3 -m pip install -q --no-deps --no-build-isolation -e . && python3 -c "import latim_captum; print('latim_captum ok')"
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg HF_HUB_OFFLINE=1
# Triton's compiled kernels in the (git-ignored) repository folder, which a warm machine keeps between calls; its
# default under the home folder was apparently compiled anew by each call (7.5 minutes for mamba-ssm's autotuned
# kernels: benchmarks/results/table5-copy-train-attempts-h100-2026-12-06.md)
export TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-$PWD/.triton-cache}
