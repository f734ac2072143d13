_base_ = './snella_160k.py'
max_iters = 80000
# 1500 warm-up iterations of 80k; the allocator's warm-ups are fractions and follow max_iters as they are.
param_scheduler = [dict(type='WarmupPolyLR', warmup=0.01875, start_factor=1e-6, power=1.0, eta_min=0.0,
                        by_epoch=False)]
train_cfg = dict(max_iters=max_iters, val_interval=8000)
default_hooks = dict(checkpoint=dict(interval=8000))
