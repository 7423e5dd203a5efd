#!/usr/bin/env bash
# The issue's GPU figures in one short run: 512x512 LR x4, LINF-LP (EDSR-baseline and RRDB)
# and SRFlow-LP, fp32 and bf16, batch 1 and 8; images/s and peak GPU memory per variant.
# Then eager vs torch.compile for LINF-LP at bf16.
# Usage: bash benchmarks/gpu_bench.sh [repeats]   (prints the hardware first; needs CUDA)
set -euo pipefail
cd "$(dirname "$0")"
R=${1:-3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
for B in 1 8; do
  python bench_speed.py --device cuda --lr 512 --batch "$B" --repeats "$R" \
    --cases linf-lp,linf-rrdb-lp,srflow-lp --precisions fp32,bf16
done
# does torch.compile pay on this GPU? (it does not on the CPU: benchmarks/README.md)
python bench_compile.py --device cuda --lr 512 --case linf-lp --precision bf16 --repeats "$R"
