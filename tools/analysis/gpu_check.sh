#!/usr/bin/env bash
# The GPU check of issue 6, for a machine with one CUDA GPU (a few minutes on a recent one): measured peak memory
# and step time of every method at ViT-L and SAM-L, 512x512, batch 2, each beside its fake-tensor estimate.
# Usage: bash tools/analysis/gpu_check.sh [OUT_DIR]   (PYTHON=... to choose the interpreter)
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-work_dirs/gpu_check}
python=${PYTHON:-python}
mkdir -p "$out"
"$python" -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU visible'; print(torch.cuda.get_device_name())"
for backbone in vit-l sam-l; do
  config=configs/snella_${backbone}_ade20k.py
  "$python" tools/analysis/benchmark.py --config "$config" --crop 512 --batch 2 --iters 5 --warmup 2 \
    --device cuda --out "$out/benchmark_${backbone}_512_b2_cuda.json"
  "$python" tools/analysis/benchmark.py --config "$config" --crop 512 --batch 2 --estimate-memory \
    --out "$out/benchmark_${backbone}_512_b2_estimated-gpu.json"
done
