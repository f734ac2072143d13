# Baseline: LoRA (rank 32, kernel 'linear') in the same layers, same pipeline as snella_dinov2-l_ade20k.py.
_base_ = '../snella_dinov2-l_ade20k.py'
model = dict(backbone=dict(snella=dict(kernel='linear')))
custom_hooks = [hook for hook in _base_.custom_hooks if hook.type != 'SNELLAAllocatorHook']  # no allocator
