# Baseline: BitFit on the frozen encoder (configs/_base_/methods/bitfit.py), same pipeline as
# snella_sam-l_ade20k.py.
_base_ = ['../snella_sam-l_ade20k.py', '../_base_/methods/bitfit.py']
model = dict(backbone=dict(_delete_=True, type='PEFTBackbone', backbone=_base_.model.backbone.backbone,
                           method=_base_.peft_method))
custom_hooks = [hook for hook in _base_.custom_hooks if hook.type != 'SNELLAAllocatorHook'] + _base_.peft_method_hooks
