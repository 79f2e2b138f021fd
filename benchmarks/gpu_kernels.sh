#!/usr/bin/env bash
# Build the mamba-ssm and causal-conv1d CUDA kernels for sm_90 (H100/H200), both at once, and pack them as one
# stripped site folder for gpu_env.sh: .sd/wheels/site.tar.xz.part* (kept on the machine while it stays warm) and the
# same parts under $OUT (copy them into .sd/wheels here and carry .sd to use them on a later, bare machine).
# Needs .sd/ with the two sdists and the build script: ../shared/tools/mamba-kernels.sh sdists .sd; cp it into .sd.
# Usage from the repository root, on the CUDA machine: bash benchmarks/gpu_kernels.sh
set -u
out=${OUT:-./gpu-out}; mkdir -p "$out" .sd/wheels
start=$(date +%s)
# the two builds overlap: causal-conv1d's few large units leave most of the cores idle
(timeout "${BUILD_S:-520}" bash .sd/mamba-kernels.sh build .sd causal_conv1d > "$out/build_causal_conv1d.log" 2>&1
 echo "causal_conv1d rc=$?") &
(timeout "${BUILD_S:-520}" bash .sd/mamba-kernels.sh build .sd mamba_ssm > "$out/build_mamba_ssm.log" 2>&1
 echo "mamba_ssm rc=$?") &
wait
echo "built in $(( $(date +%s) - start )) s"; ls -la /tmp/mk/wh
rm -rf /tmp/kwsite && mkdir -p /tmp/kwsite
for w in /tmp/mk/wh/*.whl; do python3 -m zipfile -e "$w" /tmp/kwsite; done
find /tmp/kwsite -name '*.so' -exec strip --strip-unneeded {} +
rm -f .sd/wheels/site.tar.xz.part*
tar c -C /tmp/kwsite . | xz -T0 -6 | split -d -b 15M - .sd/wheels/site.tar.xz.part
cp .sd/wheels/site.tar.xz.part* "$out/"
du -ch .sd/wheels/site.tar.xz.part* | tail -1
echo "packed in $(( $(date +%s) - start )) s"
