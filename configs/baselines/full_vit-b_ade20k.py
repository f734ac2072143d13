# Baseline: full fine-tuning of the backbone (AdamW at a ViT fine-tuning learning rate);
# same pipeline as snella_vit-b_ade20k.py.
_base_ = '../snella_vit-b_ade20k.py'
model = dict(backbone=dict(
    _delete_=True, type='TimmViT', arch='vit-b', img_size=512, out_indices=(3, 5, 7, 11), drop_path_rate=0.1,
    pretrained='checkpoints/vit_base_patch16_224.augreg2_in21k_ft_in1k.safetensors'))
optim_wrapper = dict(optimizer=dict(lr=6e-5, weight_decay=0.01))
custom_hooks = [hook for hook in _base_.custom_hooks if hook.type != 'SNELLAAllocatorHook']  # no allocator
