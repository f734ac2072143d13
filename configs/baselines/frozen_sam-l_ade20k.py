# Baseline: frozen backbone, only the neck and decode heads train; same pipeline as snella_sam-l_ade20k.py.
_base_ = '../snella_sam-l_ade20k.py'
model = dict(backbone=dict(
    _delete_=True, type='TimmViT', arch='sam-l', img_size=512, out_indices=(5, 11, 17, 23), drop_path_rate=0.0,
    frozen=True, pretrained='checkpoints/sam_vit_l_0b3195.pth'))
custom_hooks = [hook for hook in _base_.custom_hooks if hook.type != 'SNELLAAllocatorHook']  # no allocator
