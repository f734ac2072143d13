# Baseline: frozen backbone, only the neck and decode heads train; same pipeline as snella_vit-l_ade20k.py.
_base_ = '../snella_vit-l_ade20k.py'
model = dict(backbone=dict(
    _delete_=True, type='TimmViT', arch='vit-l', img_size=512, out_indices=(7, 11, 15, 23), drop_path_rate=0.0,
    frozen=True, pretrained='checkpoints/vit_large_patch16_224.augreg_in21k_ft_in1k.safetensors'))
custom_hooks = [hook for hook in _base_.custom_hooks if hook.type != 'SNELLAAllocatorHook']  # no allocator
