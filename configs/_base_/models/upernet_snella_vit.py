# UperNet + auxiliary FCN head on a frozen ViT/SAM encoder with SNELLA updates (the SNELLA method).
# Children set the architecture (arch, out_indices, channels) and the local pretrained file.
custom_imports = dict(imports=['snella_seg'], allow_failed_imports=False)
norm_cfg = dict(type='SyncBN', requires_grad=True)
data_preprocessor = dict(
    type='SegDataPreProcessor',
    size=(512, 512),
    mean=[123.675, 116.28, 103.53],
    std=[58.395, 57.12, 57.375],
    bgr_to_rgb=True,
    pad_val=0,
    seg_pad_val=255,
    # At test time pad images bottom/right to whole patches (a multiple of the patch size: 16, or 8 for the demo);
    # mmseg crops the padding off the predictions. Set it to the patch size of a backbone whose patch does not divide
    # 16 (e.g. 14); TimmViT pads and resamples by itself for any image it is given.
    test_cfg=dict(size_divisor=16))
embed_dim = 768
model = dict(
    type='EncoderDecoder',
    data_preprocessor=data_preprocessor,
    backbone=dict(
        type='SNELLABackbone',
        backbone=dict(type='TimmViT', arch='vit-b', img_size=512, out_indices=(3, 5, 7, 11), drop_path_rate=0.1,
                      pretrained=None),
        # q, k, v (the fused qkv split in three), attention output and both MLP layers, as the authors place them
        snella=dict(
            targets=[r'.*blocks\.\d+\.attn\.(qkv|proj)', r'.*blocks\.\d+\.mlp\.fc(1|2)'],
            rank=32,
            kernel='snella',
            mask='magnitude',
            sparsity=0.0,
            split_qkv=True)),
    neck=dict(type='MultiLevelNeck', in_channels=[embed_dim] * 4, out_channels=embed_dim, scales=[4, 2, 1, 0.5]),
    decode_head=dict(
        type='UPerHead',
        in_channels=[embed_dim] * 4,
        in_index=[0, 1, 2, 3],
        pool_scales=(1, 2, 3, 6),
        channels=512,
        dropout_ratio=0.1,
        num_classes=150,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)),
    auxiliary_head=dict(
        type='FCNHead',
        in_channels=embed_dim,
        in_index=3,
        channels=256,
        num_convs=1,
        concat_input=False,
        dropout_ratio=0.1,
        num_classes=150,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=0.4)),
    train_cfg=dict(),
    test_cfg=dict(mode='slide', crop_size=(512, 512), stride=(341, 341)))
