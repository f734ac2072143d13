# Baseline: frozen backbone, only the neck and decode heads train; same pipeline as snella_sam-b_ade20k.py.
_base_ = '../snella_sam-b_ade20k.py'
model = dict(backbone=dict(
    _delete_=True, type='TimmViT', arch='sam-b', img_size=512, out_indices=(2, 5, 8, 11), drop_path_rate=0.0,
    frozen=True, pretrained='checkpoints/sam_vit_b_01ec64.pth'))
custom_hooks = [hook for hook in _base_.custom_hooks if hook.type != 'SNELLAAllocatorHook']  # no allocator
