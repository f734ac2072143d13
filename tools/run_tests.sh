#!/usr/bin/env bash
# Set up (if needed), lint (ruff.toml) and run the whole test suite on CPU.
# The suite runs on TEST_WORKERS pytest-xdist workers (default 2), one thread each; a module stays on one worker, so
# its module-scoped fixtures are built once. TEST_WORKERS=0 runs it in this process.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/bootstrap.sh
.venv/bin/python -m ruff check snella_seg tools tests configs
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
exec .venv/bin/python -m pytest -q -n "${TEST_WORKERS:-2}" --dist loadscope --no-loadscope-reorder "$@"
