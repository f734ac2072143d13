#!/usr/bin/env bash
# The comparison table in one command, on CPU: generate the demo data, train the demo config briefly with SNELLA,
# the project's fused LoRA (kernel 'linear'), BitFit, LN-Tune and Adapter (configs/_base_/methods/), then compare
# the finished runs with tools/analysis/compare_runs.py (markdown table, plot, JSON in $ROOT).
# Environment: ROOT (work_dirs/comparison_demo), DATA (data/demo), ITERS (40), PYTHON (.venv/bin/python);
# CONFIGS_ONLY=1 writes the methods' configs to $ROOT/configs and stops.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
ROOT=${ROOT:-work_dirs/comparison_demo}
DATA=${DATA:-data/demo}
ITERS=${ITERS:-40}
DEMO=$PWD/configs/demo/snella_vit-tiny_demo-ade20k.py
METHODS_DIR=$PWD/configs/_base_/methods
NO_ALLOCATOR="custom_hooks = [hook for hook in _base_.custom_hooks if hook.type != 'SNELLAAllocatorHook']"
mkdir -p "$ROOT/configs"

# A PEFTBackbone method of configs/_base_/methods/ on the demo config, as configs/baselines/ apply them.
peft_config() {
    cat > "$ROOT/configs/$1_demo.py" <<PY
_base_ = ['$DEMO', '$METHODS_DIR/$1.py']
model = dict(backbone=dict(_delete_=True, type='PEFTBackbone', backbone=_base_.model.backbone.backbone,
                           method=_base_.peft_method))
$NO_ALLOCATOR + _base_.peft_method_hooks
PY
}
printf "_base_ = '%s'\n" "$DEMO" > "$ROOT/configs/snella_demo.py"
printf "_base_ = '%s'\nmodel = dict(backbone=dict(snella=dict(kernel='linear')))\n%s\n" "$DEMO" "$NO_ALLOCATOR" \
    > "$ROOT/configs/lora_demo.py"
for method in bitfit ln-tune adapter; do peft_config "$method"; done
if [[ "${CONFIGS_ONLY:-0}" == 1 ]]; then ls "$ROOT"/configs/*.py; exit 0; fi

$PY tools/make_demo_data.py --layout ade20k --out "$DATA" --num-train 40 --num-val 10 --size 128
ANN="$DATA/ADEChallengeData2016"
for config in "$ROOT"/configs/*.py; do
    name=$(basename "$config" _demo.py)
    $PY tools/train.py "$config" --work-dir "$ROOT/$name" --cfg-options \
        train_dataloader.dataset.data_root="$ANN" val_dataloader.dataset.data_root="$ANN" \
        test_dataloader.dataset.data_root="$ANN" train_cfg.max_iters="$ITERS" train_cfg.val_interval="$ITERS" \
        default_hooks.logger.interval=10 default_hooks.checkpoint.interval="$ITERS"
done
$PY tools/analysis/compare_runs.py "$ROOT"/snella "$ROOT"/lora "$ROOT"/bitfit "$ROOT"/ln-tune "$ROOT"/adapter \
    --out-md "$ROOT/comparison.md" --out-png "$ROOT/comparison.png" --out-json "$ROOT/comparison.json"
