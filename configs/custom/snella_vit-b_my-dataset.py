# Copy this file for your own data: a folder of images and a folder of label maps (PNG, one class id per pixel,
# 255 = ignore), with the class names listed here. Only the lines marked EDIT need changing. The copy may live anywhere:
# `snella_seg::` bases are the project's configs installed with the package. The tools import snella_seg first; a
# script of your own must `import snella_seg` before `Config.fromfile` (the bases' custom_imports run too late).
_base_ = [
    'snella_seg::_base_/models/upernet_snella_vit.py', 'snella_seg::_base_/schedules/snella_80k.py',
    'mmseg::_base_/default_runtime.py'
]
classes = ('background', 'road', 'building', 'vegetation')  # EDIT: your class names, in label-id order
palette = [[0, 0, 0], [128, 64, 128], [70, 70, 70], [107, 142, 35]]  # EDIT: one RGB colour per class
data_root = 'data/my_dataset'  # EDIT: holds the image and label folders below
img_dir, ann_dir = 'img_dir', 'ann_dir'  # EDIT: folders under data_root, each with train/ and val/ inside
img_suffix, seg_map_suffix = '.jpg', '.png'  # EDIT: your file suffixes
crop_size = (512, 512)  # EDIT if you like: training crops (height, width); the model pads batches to it
dataset = dict(type='BaseSegDataset', data_root=data_root, img_suffix=img_suffix, seg_map_suffix=seg_map_suffix,
               reduce_zero_label=False, metainfo=dict(classes=classes, palette=palette))
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='RandomResize', scale=(2048, 512), ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(2048, 512), keep_ratio=True),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs')
]
# tools/test.py --tta: the test scale times 0.5..1.75, each also flipped; predictions are averaged.
img_ratios = [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]
tta_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='TestTimeAug', transforms=[
        [dict(type='Resize', scale=(int(2048 * ratio), int(512 * ratio)), keep_ratio=True) for ratio in img_ratios],
        [dict(type='RandomFlip', prob=0.0, direction='horizontal'),
         dict(type='RandomFlip', prob=1.0, direction='horizontal')],
        [dict(type='LoadAnnotations')], [dict(type='PackSegInputs')]])
]
train_dataloader = dict(
    batch_size=4, num_workers=4, persistent_workers=True, sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(**dataset, data_prefix=dict(img_path=f'{img_dir}/train', seg_map_path=f'{ann_dir}/train'),
                 pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1, num_workers=4, persistent_workers=True, sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(**dataset, data_prefix=dict(img_path=f'{img_dir}/val', seg_map_path=f'{ann_dir}/val'),
                 pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type='PresentClassIoUMetric', iou_metrics=['mIoU'])
test_evaluator = val_evaluator
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(backbone=dict(pretrained='checkpoints/vit_base_patch16_224.augreg2_in21k_ft_in1k.safetensors')),
    decode_head=dict(num_classes=len(classes)),
    auxiliary_head=dict(num_classes=len(classes)),
    # sliding-window inference over windows of the training crop, overlapping by a third
    test_cfg=dict(crop_size=crop_size, stride=tuple(side * 2 // 3 for side in crop_size)))
