# Baseline: SNELL (distance kernel, fixed sparsity 0.7 in every layer, no allocator),
# same pipeline as snella_sam-h_ade20k.py.
_base_ = '../snella_sam-h_ade20k.py'
model = dict(backbone=dict(snella=dict(kernel='snell', sparsity=0.7)))
custom_hooks = [hook for hook in _base_.custom_hooks if hook.type != 'SNELLAAllocatorHook']  # no allocator
