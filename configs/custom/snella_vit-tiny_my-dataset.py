# A CPU rehearsal for your own data set before any GPU time (docs/custom_dataset.md): the ViT-B template beside
# this file with a tiny randomly initialised ViT, 128x128 crops, images resized to 128 px high and 100 iterations
# (--tta scales them by the template's ratios, so it stays as quick).
# It checks your files, classes and commands in minutes; its mIoU says nothing about SNELLA. Copy it next to your
# copy of the template and point _base_ at that copy (EDIT).
_base_ = './snella_vit-b_my-dataset.py'  # EDIT: your copy of the ViT-B template
crop_size = (128, 128)
embed_dim = 64
max_iters = 100
scale = (512, 128)
# Your copy's pipelines, with its resize scale and crop shrunk to the rehearsal's sizes.
train_pipeline = [
    dict(t, scale=scale) if t.type == 'RandomResize' else dict(t, crop_size=crop_size) if t.type == 'RandomCrop' else t
    for t in _base_.train_pipeline
]
test_pipeline = [dict(t, scale=scale) if t.type == 'Resize' else t for t in _base_.test_pipeline]
# --tta: the template's multi-scale resizes, each at the rehearsal's scale times its ratio.
tta_pipeline = [
    dict(t, transforms=[[dict(resize, scale=(int(scale[0] * ratio), int(scale[1] * ratio)))
                         for resize, ratio in zip(t.transforms[0], _base_.img_ratios)], *t.transforms[1:]])
    if t.type == 'TestTimeAug' else t for t in _base_.tta_pipeline
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
