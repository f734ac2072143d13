#!/usr/bin/env bash
# Create .venv (once) and install snella-seg with its pinned stack. Re-running is cheap: it only checks.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
if ! .venv/bin/python -c "import snella_seg, mmseg, timm, segment_anything, ruff, pooch, xdist" 2>/dev/null; then
  # Measured: the pinned stack fills 6.1 GB of .venv on x86_64 (PyPI's torch is a CUDA build). Check before pip
  # starts, so a full disk is named here rather than as an OSError halfway through the install.
  need_kb=$((7 * 1024 * 1024 - $(du -sk .venv | cut -f1)))
  free_kb=$(df -Pk . | awk 'NR == 2 {print $4}')
  if [ "$free_kb" -lt "$need_kb" ]; then
    echo "bootstrap: installing the pinned stack into $(pwd)/.venv needs about $((need_kb / 1048576 + 1)) GB more" \
      "disk space, but only $((free_kb / 1048576)) GB is free there. Free some space (old clones and their .venv" \
      "folders are 6 GB each) and run this again." >&2
    exit 1
  fi
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -r requirements.txt
  .venv/bin/python -m pip install -q --no-deps -e .
fi
