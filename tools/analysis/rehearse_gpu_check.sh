#!/usr/bin/env bash
# The GPU check rehearsed on the lent GPU machine's own stack, on a CPU: Python 3.12, torch 2.11, numpy 2.5,
# torchvision 0.26, timm and peft preinstalled, as that machine has them, plus the wheelhouse, through
# tools/analysis/gpu_check.sh OUT --device cpu --tiny. The venv is built once and cached outside the repository.
# Then SNELLA's fused Triton kernels are compiled for an H100 (sm_90) with that Triton, without a GPU
# (tools/analysis/compile_fused_kernels.py: registers and spills in OUT/fused_kernels_sm90.json).
#
# torch 2.11 from PyPI is the CUDA build: without its nvidia-* packages it does not import (libtorch_cuda.so needs
# libcudnn, libcublas, ...), and PyPI has no CPU build of it, so the venv holds the whole closure, about 5 GB, as the
# GPU machine does. --no-deps for torch alone was tried: `import torch` fails on libcudnn.so.9.
#
# Usage: bash tools/analysis/rehearse_gpu_check.sh [OUT_DIR]
#   PYTHON312: a Python 3.12 (default: pyenv's newest 3.12). GPU_STACK_VENV: the venv (default
#   ~/.cache/snella-seg/gpu-stack-py312). GPU_CHECK_TIME_SCALE: passed on (default 4: two shared cores, not an H100).
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-$(mktemp -d "${TMPDIR:-/tmp}/gpu_check_rehearsal.XXXXXX")}
venv=${GPU_STACK_VENV:-$HOME/.cache/snella-seg/gpu-stack-py312}
# The lent machine's versions of what the check imports from its image (the rest comes from the wheelhouse).
stack=(torch==2.11.0 numpy==2.5.2 torchvision==0.26.0 timm==1.0.31 peft 'setuptools<81' opencv-python-headless pyyaml
  pillow matplotlib scipy regex rich packaging safetensors)

if [ ! -f "$venv/.complete" ]; then
  python312=${PYTHON312:-}
  if [ -z "$python312" ]; then
    root=$(pyenv root 2> /dev/null || echo "$HOME/.pyenv")
    python312=$(ls -d "$root"/versions/3.12.*/bin/python 2> /dev/null | sort -V | tail -1)
  fi
  [ -x "$python312" ] || { echo "rehearse_gpu_check: no Python 3.12 found; set PYTHON312" >&2; exit 1; }
  echo "rehearse_gpu_check: building $venv with $python312 (once; about 5 GB)"
  "$python312" -m venv --clear "$venv"
  "$venv/bin/python" -m pip install --quiet "${stack[@]}"
  touch "$venv/.complete"
fi
[ -n "$(ls wheelhouse/*.whl 2> /dev/null)" ] || bash tools/analysis/make_wheelhouse.sh wheelhouse
"$venv/bin/python" -c "import sys, torch, numpy, torchvision; print('rehearse_gpu_check: Python', sys.version.split()[0],
  'torch', torch.__version__, 'numpy', numpy.__version__, 'torchvision', torchvision.__version__)"
start=$SECONDS
status=0
env -u PYTHONPATH PYTHON="$venv/bin/python" WHEELHOUSE=wheelhouse OMP_NUM_THREADS=1 PIP_NO_INDEX=1 \
  GPU_CHECK_TIME_SCALE="${GPU_CHECK_TIME_SCALE:-4}" bash tools/analysis/gpu_check.sh "$out" --device cpu --tiny \
  || status=$?
site=$(mktemp -d "${TMPDIR:-/tmp}/rehearse_site.XXXXXX")
trap 'rm -rf "$site"' EXIT
"$venv/bin/python" -m pip install --quiet --no-index --no-deps --disable-pip-version-check --target "$site" \
  wheelhouse/*.whl
env -u PYTHONPATH PYTHONPATH="$PWD:$site" OMP_NUM_THREADS=1 "$venv/bin/python" \
  tools/analysis/compile_fused_kernels.py --arch 90 --out "$out/fused_kernels_sm90.json" | tee "$out/fused_kernels.txt" \
  || status=$?
echo "rehearse_gpu_check: exit $status after $((SECONDS - start)) s; JSON and log.txt in $out"
exit $status
