# SNELLA on the frozen EVA-02 L/14 (official MIM checkpoint, Merged-38M; RoPE, SwiGLU) + UperNet,
# Pascal Context 59, 512x512, 80k iterations: the ADE20K config's model with Pascal Context's data and schedule.
_base_ = ['./snella_eva02-l_ade20k.py', './_base_/pascal_context_59_80k.py']
globals().update(_base_.pop('pascal_context_59_80k'))
