# AdamW over the SNELLA updates and the decode heads only (SNELLAOptimWrapperConstructor drops frozen weights),
# linear warm-up then poly decay, and the bi-level allocator following the iteration count.
# Warm-ups are fractions of train_cfg.max_iters, so `--cfg-options train_cfg.max_iters=N` shortens the whole
# schedule (LR warm-up and decay, budget warm-ups); children change max_iters only.
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=3e-4, betas=(0.9, 0.999), weight_decay=0.01),
    constructor='SNELLAOptimWrapperConstructor',
    paramwise_cfg=dict(custom_keys={'.deltas.': dict(lr_mult=1.0), 'decode_head': dict(lr_mult=1.0)}),
    clip_grad=None)
max_iters = 160000
# 1500 warm-up iterations of 160k; `end` is left to the Runner, which sets it to train_cfg.max_iters.
param_scheduler = [dict(type='WarmupPolyLR', warmup=0.009375, start_factor=1e-6, power=1.0, eta_min=0.0,
                        by_epoch=False)]
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
# The budget shrinks from dense to target_ratio over the middle of training (cubic), then stays fixed: dense for
# the first 1/40 of the iterations, at target_ratio for the last 1/4.
custom_hooks = [
    dict(type='SNELLAAllocatorHook', target_ratio=0.7, init_warmup=0.025, final_warmup=0.25, mask_interval=100,
         log_interval=50),
    dict(type='FiniteTrainingHook'),
    dict(type='ResumeCompatibilityHook'),
    # RNG states of every rank in each checkpoint, restored on --resume: dropout, drop path and random
    # augmentation then draw what an uninterrupted run draws.
    dict(type='RNGStateHook'),
]
# A fixed seed: mmengine builds the data sampler before it reads a resumed checkpoint's seed, so a seed drawn
# afresh at every start would shuffle the resumed run's data in another order.
randomness = dict(seed=0)
