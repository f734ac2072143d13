#!/usr/bin/env bash
# Set up (if needed), lint (ruff.toml) and run the whole test suite on CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/bootstrap.sh
.venv/bin/python -m ruff check snella_seg tools tests configs
exec .venv/bin/python -m pytest -q "$@"
