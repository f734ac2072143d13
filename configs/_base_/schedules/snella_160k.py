# AdamW over the SNELLA updates and the decode heads only (SNELLAOptimWrapperConstructor drops frozen weights),
# linear warm-up then poly decay, and the bi-level allocator following the iteration count.
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=3e-4, betas=(0.9, 0.999), weight_decay=0.01),
    constructor='SNELLAOptimWrapperConstructor',
    paramwise_cfg=dict(custom_keys={'.deltas.': dict(lr_mult=1.0), 'decode_head': dict(lr_mult=1.0)}),
    clip_grad=None)
max_iters = 160000
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', eta_min=0.0, power=1.0, begin=1500, end=max_iters, by_epoch=False),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=16000)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=50, log_metric_by_epoch=False),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=16000, max_keep_ckpts=3),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    visualization=dict(type='SegVisualizationHook'))
# The budget shrinks from dense to target_ratio over the middle of training (cubic), then stays fixed.
custom_hooks = [
    dict(type='SNELLAAllocatorHook', target_ratio=0.7, init_warmup=max_iters // 40, final_warmup=max_iters // 4,
         mask_interval=100, log_interval=50),
    dict(type='FiniteTrainingHook'),
    dict(type='ResumeCompatibilityHook'),
]
