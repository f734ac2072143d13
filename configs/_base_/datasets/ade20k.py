# mmseg's own ADE20K settings (512x512 crops, 150 classes, multi-scale + flip tta_pipeline); data_root is relative:
# link your copy to data/ade. The metric's per-class table lists only the classes present in the evaluated data.
_base_ = 'mmseg::_base_/datasets/ade20k.py'
val_evaluator = dict(type='PresentClassIoUMetric', iou_metrics=['mIoU'])
test_evaluator = val_evaluator
