#!/usr/bin/env bash
# The wheels tools/analysis/gpu_check.sh installs on a lent GPU machine, which reaches no package registry: run this
# where pip reaches one, then let wheelhouse/ travel with the working tree (the device tool's carry).
# Usage: bash tools/analysis/make_wheelhouse.sh [DIR]   (default wheelhouse/; PYTHON=... to choose the interpreter)
#
# Only what such a machine lacks: the OpenMMLab stack at requirements.txt's pins, timm at the checked release,
# setuptools < 81 (mmengine resolves 'mmseg::' configs through pkg_resources) and their small pure-Python
# dependencies. The machine's own torch, torchvision, numpy, OpenCV, PyYAML, Pillow, matplotlib, SciPy, regex,
# rich, packaging and safetensors are used as they are (the device tool's KINDS.md lists that image's packages).
# Versions are those the test suite runs with (.venv), so the rehearsal test and the GPU run install the same.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-wheelhouse}
python=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
max_mb=20
wheels=(
  mmengine==0.10.7 mmsegmentation==1.2.2 mmcv-lite==2.1.0 timm==1.0.31 setuptools==80.10.2
  addict==2.4.0 yapf==0.43.0 platformdirs==4.14.9 termcolor==3.3.0 prettytable==3.18.0 wcwidth==0.9.4 ftfy==6.3.1
)
mkdir -p "$out"
# --no-deps: the list above is the whole closure beyond the machine's packages (checked by the rehearsal test).
# --only-binary with a pure-Python platform: a wheel that needs compiling here would not run on the machine.
"$python" -m pip download --quiet --no-deps --only-binary=:all: --platform any --python-version 3.11 \
  --implementation py --dest "$out" "${wheels[@]}"
count=$(ls "$out"/*.whl | wc -l)
if [ "$count" -ne "${#wheels[@]}" ]; then
  echo "make_wheelhouse: $out holds $count wheels, expected ${#wheels[@]}: remove stale versions from $out" >&2
  exit 1
fi
size_mb=$(du -sm "$out" | cut -f1)
if [ "$size_mb" -gt "$max_mb" ]; then
  echo "make_wheelhouse: $out is $size_mb MB, over the $max_mb MB this check expects (the working tree that travels" \
    "to a GPU machine holds 64 MiB): a wheel there is not pure Python or not small; see ls -lS $out" >&2
  exit 1
fi
echo "make_wheelhouse: $count wheels, $size_mb MB in $out"
