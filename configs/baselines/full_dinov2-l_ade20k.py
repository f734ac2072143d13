# Baseline: full fine-tuning of the backbone (AdamW at a ViT fine-tuning learning rate);
# same pipeline as snella_dinov2-l_ade20k.py.
_base_ = '../snella_dinov2-l_ade20k.py'
model = dict(backbone=dict(
    _delete_=True, type='TimmViT', arch='dinov2-l', img_size=512, out_indices=(7, 11, 15, 23), drop_path_rate=0.1,
    pretrained='checkpoints/dinov2_vitl14_pretrain.pth'))
optim_wrapper = dict(optimizer=dict(lr=6e-5, weight_decay=0.01))
custom_hooks = [hook for hook in _base_.custom_hooks if hook.type != 'SNELLAAllocatorHook']  # no allocator
