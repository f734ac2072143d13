# A CPU rehearsal for your own data set before any GPU time (docs/custom_dataset.md): the ViT-B template beside
# this file with a tiny randomly initialised ViT, 128x128 crops, images resized to 128 px high and 100 iterations.
# It checks your files, classes and commands in minutes; its mIoU says nothing about SNELLA. Copy it next to your
# copy of the template and point _base_ at that copy (EDIT).
_base_ = './snella_vit-b_my-dataset.py'  # EDIT: your copy of the ViT-B template
crop_size = (128, 128)
embed_dim = 64
max_iters = 100
scale = (512, 128)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='RandomResize', scale=scale, ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=scale, keep_ratio=True),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs')
]
tta_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='TestTimeAug', transforms=[
        [dict(type='Resize', scale=(int(scale[0] * ratio), int(scale[1] * ratio)), keep_ratio=True)
         for ratio in _base_.img_ratios],
        [dict(type='RandomFlip', prob=0.0, direction='horizontal'),
         dict(type='RandomFlip', prob=1.0, direction='horizontal')],
        [dict(type='LoadAnnotations')], [dict(type='PackSegInputs')]])
]
train_dataloader = dict(num_workers=0, persistent_workers=False, dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(num_workers=0, persistent_workers=False, dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(
        backbone=dict(arch=dict(_delete_=True, family='vit', embed_dim=embed_dim, depth=4, num_heads=2, patch_size=8),
                      img_size=crop_size[0], out_indices=(0, 1, 2, 3), drop_path_rate=0.1, pretrained=None),
        snella=dict(rank=8)),
    neck=dict(in_channels=[embed_dim] * 4, out_channels=embed_dim),
    decode_head=dict(in_channels=[embed_dim] * 4, channels=64),
    auxiliary_head=dict(in_channels=embed_dim, channels=32),
    test_cfg=dict(crop_size=crop_size, stride=tuple(side * 2 // 3 for side in crop_size)))
optim_wrapper = dict(optimizer=dict(lr=2e-3))
train_cfg = dict(max_iters=max_iters, val_interval=max_iters)
default_hooks = dict(logger=dict(interval=10), checkpoint=dict(interval=max_iters))
