#!/usr/bin/env bash
# Prepare a bare CUDA machine (torch + transformers preinstalled, no network) to run our GPU tests and benchmarks.
# Source it from the repository root: `source benchmarks/gpu_env.sh`.
#   .sd/wheels/wheels.tar.xz.part*  prebuilt mamba-ssm + causal-conv1d wheels (from ../shared/tools/mamba-kernels.sh)
#   .whl/*.whl                      pure-Python wheels missing there (captum, inseq, ...)
if [ -d .sd/wheels ]; then
  mkdir -p /tmp/kw && cat .sd/wheels/wheels.tar.xz.part* | xz -d | tar x -C /tmp/kw \
    && python3 -m pip install -q --no-deps --no-index /tmp/kw/*.whl \
    && python3 -c "import mamba_ssm, causal_conv1d; print('mamba_ssm', mamba_ssm.__version__)"
fi
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
python3 -m pip install -q --no-deps --no-build-isolation -e . && python3 -c "import latim_captum; print('latim_captum ok')"
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg HF_HUB_OFFLINE=1
