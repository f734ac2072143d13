# SNELLA on the frozen DINOv3 ViT-L/16 (official LVD-1689M checkpoint; RoPE, 4 storage tokens) + UperNet,
# Pascal Context 59, 512x512, 80k iterations: the ADE20K config's model with Pascal Context's data and schedule.
_base_ = ['./snella_dinov3-l_ade20k.py', './_base_/pascal_context_59_80k.py']
globals().update(_base_.pop('pascal_context_59_80k'))
