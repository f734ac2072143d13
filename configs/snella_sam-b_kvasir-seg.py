# The paper's own segmentation task: binary polyp segmentation on Kvasir-SEG with SNELLA on the frozen SAM ViT-B
# encoder + UperNet; reports mDice and mIoU. 20k iterations.
_base_ = [
    './_base_/models/upernet_snella_vit.py', './_base_/datasets/kvasir_seg.py',
    './_base_/schedules/snella_80k.py', 'mmseg::_base_/default_runtime.py'
]
embed_dim = 768
max_iters = 20000
model = dict(
    data_preprocessor=dict(size=_base_.crop_size),  # batches padded to the training crop
    backbone=dict(backbone=dict(arch='sam-b', out_indices=(2, 5, 8, 11),
                                pretrained='checkpoints/sam_vit_b_01ec64.pth')),
    neck=dict(in_channels=[embed_dim] * 4, out_channels=embed_dim),
    decode_head=dict(in_channels=[embed_dim] * 4, num_classes=2),
    auxiliary_head=dict(in_channels=embed_dim, num_classes=2))
# 500 warm-up iterations of 20k; the allocator's warm-ups are fractions of max_iters and need no restating.
param_scheduler = [dict(type='WarmupPolyLR', warmup=0.025, start_factor=1e-6, power=1.0, eta_min=0.0,
                        by_epoch=False)]
train_cfg = dict(max_iters=max_iters, val_interval=2000)
default_hooks = dict(checkpoint=dict(interval=2000))
