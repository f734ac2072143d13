# Ablation: SNELLA's mixed kernel without the allocator (no inter-layer competition),
# same pipeline as snella_vit-b_ade20k.py.
_base_ = '../snella_vit-b_ade20k.py'
custom_hooks = [hook for hook in _base_.custom_hooks if hook.type != 'SNELLAAllocatorHook']  # no allocator
