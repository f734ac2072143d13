_base_ = './snella_160k.py'
max_iters = 80000
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', eta_min=0.0, power=1.0, begin=1500, end=max_iters, by_epoch=False),
]
train_cfg = dict(max_iters=max_iters, val_interval=8000)
default_hooks = dict(checkpoint=dict(interval=8000))
custom_hooks = [
    dict(type='SNELLAAllocatorHook', target_ratio=0.7, init_warmup=max_iters // 40, final_warmup=max_iters // 4,
         mask_interval=100, log_interval=50),
    dict(type='FiniteTrainingHook'),
    dict(type='ResumeCompatibilityHook'),
]
