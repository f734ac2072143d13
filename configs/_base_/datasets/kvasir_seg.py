# Kvasir-SEG polyp segmentation (1000 images; the usual 880/120 split as ann_file lists of image ids).
# Layout: data/kvasir-seg/{images,masks}/<id>.jpg and data/kvasir-seg/{train,val}.txt
dataset_type = 'KvasirSEGDataset'
data_root = 'data/kvasir-seg'
crop_size = (512, 512)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadBinaryMask'),
    dict(type='RandomResize', scale=(640, 512), ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.9),
    dict(type='RandomFlip', prob=0.5, direction=['horizontal', 'vertical']),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(640, 512), keep_ratio=True),
    dict(type='LoadBinaryMask'),
    dict(type='PackSegInputs')
]
# tools/test.py --tta: the test scale times 0.5..1.75, each also flipped; predictions are averaged.
img_ratios = [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]
tta_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='TestTimeAug', transforms=[
        [dict(type='Resize', scale=(int(640 * ratio), int(512 * ratio)), keep_ratio=True) for ratio in img_ratios],
        [dict(type='RandomFlip', prob=0.0, direction='horizontal'),
         dict(type='RandomFlip', prob=1.0, direction='horizontal')],
        [dict(type='LoadBinaryMask')], [dict(type='PackSegInputs')]])
]
train_dataloader = dict(
    batch_size=4, num_workers=4, persistent_workers=True,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(type=dataset_type, data_root=data_root, ann_file='train.txt',
                 data_prefix=dict(img_path='images', seg_map_path='masks'), pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1, num_workers=4, persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type=dataset_type, data_root=data_root, ann_file='val.txt',
                 data_prefix=dict(img_path='images', seg_map_path='masks'), pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type='PresentClassIoUMetric', iou_metrics=['mIoU', 'mDice'])
test_evaluator = val_evaluator
