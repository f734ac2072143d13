# SNELLA on the frozen OpenAI CLIP ViT-L/14 image tower (OpenCLIP's state dict of the OpenAI weights) + UperNet,
# ADE20K (150 classes), 512x512, 160k iterations.
_base_ = [
    './_base_/models/upernet_snella_vit.py', './_base_/datasets/ade20k.py',
    './_base_/schedules/snella_160k.py', 'mmseg::_base_/default_runtime.py'
]
embed_dim = 1024
model = dict(
    # CLIP normalizes with its own statistics; batches padded to the training crop; test images to whole 14 px
    # patches (the backbone pads 512 to 518)
    data_preprocessor=dict(size=_base_.crop_size, mean=[122.771, 116.746, 104.094], std=[68.501, 66.632, 70.323],
                           test_cfg=dict(size_divisor=14)),
    backbone=dict(backbone=dict(
        arch='clip-l', out_indices=(7, 11, 15, 23),
        pretrained='checkpoints/vit_large_patch14_clip_224.openai.bin')),
    neck=dict(in_channels=[embed_dim] * 4, out_channels=embed_dim),
    decode_head=dict(in_channels=[embed_dim] * 4, num_classes=150),
    auxiliary_head=dict(in_channels=embed_dim, num_classes=150))
