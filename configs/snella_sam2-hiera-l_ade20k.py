# SNELLA on the frozen SAM 2 Hiera-L image encoder (the trunk of the official sam2_hiera_large.pt) + UperNet,
# ADE20K (150 classes), 512x512, 160k iterations. Hiera's four stages (strides 4, 8, 16, 32) feed UperNet directly,
# so there is no MultiLevelNeck.
_base_ = [
    './_base_/models/upernet_snella_vit.py', './_base_/datasets/ade20k.py',
    './_base_/schedules/snella_160k.py', 'mmseg::_base_/default_runtime.py'
]
stage_channels = [144, 288, 576, 1152]
model = dict(
    # SAM 2 normalizes with ImageNet's mean/std (the base's); batches padded to the training crop; test images to
    # whole 32 px (Hiera's windows and poolings; the backbone pads any other size itself)
    data_preprocessor=dict(size=_base_.crop_size, test_cfg=dict(size_divisor=32)),
    backbone=dict(
        backbone=dict(
            _delete_=True, type='TimmHiera', arch='sam2-hiera-l', out_indices=(0, 1, 2, 3), drop_path_rate=0.1,
            pretrained='checkpoints/sam2_hiera_large.pt'),
        # the base's qkv, attention proj, fc1 and fc2 of every block, plus the skip projection of each stage's first
        # block (2, 8, 44), where the width doubles (elsewhere it is an Identity)
        snella=dict(targets=[r'.*blocks\.\d+\.attn\.(qkv|proj)', r'.*blocks\.\d+\.mlp\.fc(1|2)',
                             r'.*blocks\.(2|8|44)\.proj'])),
    neck=None,
    decode_head=dict(in_channels=stage_channels, num_classes=150),
    auxiliary_head=dict(in_channels=stage_channels[2], in_index=2, num_classes=150))
