#!/usr/bin/env bash
# Distributed training with torchrun: bash tools/dist_train.sh CONFIG GPUS [train.py options]
# On a machine without CUDA the processes train on CPU with the gloo backend.
CONFIG=$1
GPUS=$2
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
PORT=${PORT:-29500}
MASTER_ADDR=${MASTER_ADDR:-"127.0.0.1"}
PYTHON=${PYTHON:-python}
# Paths (config, checkpoint, --work-dir, data roots in the config) stay relative to where you run this; the
# repository goes on PYTHONPATH so that `import snella_seg` works without an install. launch_torchrun.py is torchrun
# whose Ctrl-C ends with one line per process instead of tracebacks.
TOOLS_DIR=$(cd "$(dirname "$0")" && pwd)
export PYTHONPATH="$(dirname "$TOOLS_DIR")${PYTHONPATH:+:$PYTHONPATH}"
exec "$PYTHON" "$TOOLS_DIR/launch_torchrun.py" --nnodes="$NNODES" --node_rank="$NODE_RANK" \
    --master_addr="$MASTER_ADDR" --nproc_per_node="$GPUS" --master_port="$PORT" "$TOOLS_DIR/train.py" "$CONFIG" \
    --launcher pytorch "${@:3}"
