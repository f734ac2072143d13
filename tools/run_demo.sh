#!/usr/bin/env bash
# The embedded default, end to end on CPU: set up, generate ADE20K-layout demo data, train a tiny SNELLA
# ViT + UperNet, evaluate mIoU, and write prediction overlays and the allocation plot.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/bootstrap.sh
PY=.venv/bin/python
CONFIG=configs/demo/snella_vit-tiny_demo-ade20k.py
WORK_DIR=${WORK_DIR:-work_dirs/demo}
DATA=${DATA:-data/demo}
$PY tools/make_demo_data.py --layout ade20k --out "$DATA" --num-train 160 --num-val 40 --size 128
$PY tools/train.py "$CONFIG" --work-dir "$WORK_DIR" \
    --cfg-options train_dataloader.dataset.data_root="$DATA/ADEChallengeData2016" \
    val_dataloader.dataset.data_root="$DATA/ADEChallengeData2016" \
    test_dataloader.dataset.data_root="$DATA/ADEChallengeData2016"
CHECKPOINT=$(ls -t "$WORK_DIR"/iter_*.pth | head -n 1)
$PY tools/test.py "$CONFIG" "$CHECKPOINT" --work-dir "$WORK_DIR/test" --show-dir "$WORK_DIR/overlays" \
    --cfg-options test_dataloader.dataset.data_root="$DATA/ADEChallengeData2016"
$PY tools/demo.py "$CONFIG" "$CHECKPOINT" "$DATA/ADEChallengeData2016/images/validation" \
    --out-dir "$WORK_DIR/demo_overlays" > /dev/null
echo "mIoU above; overlays in $WORK_DIR/overlays and $WORK_DIR/demo_overlays; allocation plot in $WORK_DIR/snella_allocation.png"
