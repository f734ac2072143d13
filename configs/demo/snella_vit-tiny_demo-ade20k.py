# The embedded default: a tiny ViT + UperNet with SNELLA, trained on CPU in a few minutes on the generated
# ADE20K-layout demo data (python tools/make_demo_data.py --layout ade20k --out data/demo).
# Same components and code path as the real configs; only sizes and the schedule shrink.
_base_ = [
    '../_base_/models/upernet_snella_vit.py', '../_base_/schedules/snella_160k.py',
    'mmseg::_base_/default_runtime.py'
]
dataset_type = 'ADE20KDataset'
data_root = 'data/demo/ADEChallengeData2016'
crop_size = (128, 128)
embed_dim = 64
max_iters = 400
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='RandomResize', scale=(128, 128), ratio_range=(0.8, 1.25), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(128, 128), keep_ratio=True),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs')
]
# tools/test.py --tta: the test scale times 0.5..1.75, each also flipped; predictions are averaged.
img_ratios = [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]
tta_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='TestTimeAug', transforms=[
        [dict(type='Resize', scale=(int(128 * ratio), int(128 * ratio)), keep_ratio=True) for ratio in img_ratios],
        [dict(type='RandomFlip', prob=0.0, direction='horizontal'),
         dict(type='RandomFlip', prob=1.0, direction='horizontal')],
        [dict(type='LoadAnnotations')], [dict(type='PackSegInputs')]])
]
train_dataloader = dict(
    batch_size=4, num_workers=0, persistent_workers=False,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(type=dataset_type, data_root=data_root, pipeline=train_pipeline,
                 data_prefix=dict(img_path='images/training', seg_map_path='annotations/training')))
val_dataloader = dict(
    batch_size=1, num_workers=0, persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type=dataset_type, data_root=data_root, pipeline=test_pipeline,
                 data_prefix=dict(img_path='images/validation', seg_map_path='annotations/validation')))
test_dataloader = val_dataloader
val_evaluator = dict(type='PresentClassIoUMetric', iou_metrics=['mIoU'])
test_evaluator = val_evaluator

model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(backbone=dict(
        arch=dict(_delete_=True, family='vit', embed_dim=embed_dim, depth=4, num_heads=2, patch_size=8),
        img_size=128, out_indices=(0, 1, 2, 3), drop_path_rate=0.0),
        snella=dict(rank=8)),
    neck=dict(in_channels=[embed_dim] * 4, out_channels=embed_dim),
    decode_head=dict(in_channels=[embed_dim] * 4, channels=64, num_classes=150),
    auxiliary_head=dict(in_channels=embed_dim, channels=32, num_classes=150),
    test_cfg=dict(mode='whole'))

optim_wrapper = dict(optimizer=dict(lr=2e-3))
# The warm-up as a fraction of max_iters (40 of 400 iterations), so a shorter demo run keeps the schedule's shape.
param_scheduler = [dict(type='WarmupPolyLR', warmup=0.1, start_factor=1e-3, power=1.0, eta_min=0.0, by_epoch=False)]
train_cfg = dict(max_iters=max_iters, val_interval=200)
default_hooks = dict(logger=dict(interval=20), checkpoint=dict(interval=200, max_keep_ckpts=2))
# The schedule's hooks, the allocator retuned for the demo: dense for 40 of 400 iterations, at target for the last 100.
custom_hooks = [
    dict(hook, init_warmup=0.1, final_warmup=0.25, mask_interval=10, log_interval=20)
    if hook.type == 'SNELLAAllocatorHook' else hook for hook in _base_.custom_hooks
]
env_cfg = dict(cudnn_benchmark=False)
