# SNELLA on the frozen EVA-02 L/14 (official MIM checkpoint, Merged-38M; RoPE, SwiGLU) + UperNet,
# Pascal Context 59, 512x512, 80k iterations.
_base_ = [
    './_base_/models/upernet_snella_vit.py', './_base_/datasets/pascal_context_59.py',
    './_base_/schedules/snella_80k.py', 'mmseg::_base_/default_runtime.py'
]
embed_dim = 1024
model = dict(
    # EVA-02 normalizes with CLIP's statistics; batches padded to the training crop; test images to whole 14 px
    # patches (the backbone pads 512 to 518)
    data_preprocessor=dict(size=_base_.crop_size, mean=[122.771, 116.746, 104.094], std=[68.501, 66.632, 70.323],
                           test_cfg=dict(size_divisor=14)),
    backbone=dict(
        backbone=dict(arch='eva02-l', out_indices=(7, 11, 15, 23), pretrained='checkpoints/eva02_L_pt_m38m_p14.pt'),
        # q, k, v (separate layers in EVA-02), attention output and SwiGLU's gate, value and output projections
        snella=dict(targets=[r'.*blocks\.\d+\.attn\.(q_proj|k_proj|v_proj|proj)',
                             r'.*blocks\.\d+\.mlp\.(fc1_g|fc1_x|fc2)'])),
    neck=dict(in_channels=[embed_dim] * 4, out_channels=embed_dim),
    decode_head=dict(in_channels=[embed_dim] * 4, num_classes=59),
    auxiliary_head=dict(in_channels=embed_dim, num_classes=59))
