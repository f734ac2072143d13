# SNELLA on the frozen DINOv3 ViT-L/16 (official LVD-1689M checkpoint; RoPE, 4 storage tokens) + UperNet,
# Pascal Context 59, 512x512, 80k iterations.
_base_ = [
    './_base_/models/upernet_snella_vit.py', './_base_/datasets/pascal_context_59.py',
    './_base_/schedules/snella_80k.py', 'mmseg::_base_/default_runtime.py'
]
embed_dim = 1024
model = dict(
    data_preprocessor=dict(size=_base_.crop_size),  # batches padded to the training crop
    backbone=dict(backbone=dict(
        arch='dinov3-l', out_indices=(7, 11, 15, 23),
        pretrained='checkpoints/dinov3_vitl16_pretrain_lvd1689m-8aa4cbdd.pth')),
    neck=dict(in_channels=[embed_dim] * 4, out_channels=embed_dim),
    decode_head=dict(in_channels=[embed_dim] * 4, num_classes=59),
    auxiliary_head=dict(in_channels=embed_dim, num_classes=59))
