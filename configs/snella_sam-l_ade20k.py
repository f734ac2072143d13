# SNELLA on the frozen SAM ViT-L image encoder (official checkpoint) + UperNet,
# ADE20K (150 classes), 512x512, 160k iterations.
_base_ = [
    './_base_/models/upernet_snella_vit.py', './_base_/datasets/ade20k.py',
    './_base_/schedules/snella_160k.py', 'mmseg::_base_/default_runtime.py'
]
embed_dim = 1024
model = dict(
    data_preprocessor=dict(size=_base_.crop_size),  # batches padded to the training crop
    backbone=dict(backbone=dict(
        arch='sam-l', out_indices=(5, 11, 17, 23),
        pretrained='checkpoints/sam_vit_l_0b3195.pth')),
    neck=dict(in_channels=[embed_dim] * 4, out_channels=embed_dim),
    decode_head=dict(in_channels=[embed_dim] * 4, num_classes=150),
    auxiliary_head=dict(in_channels=embed_dim, num_classes=150))
