# LoKr through huggingface peft (Yeh et al., ICLR 2024): Kronecker product with a rank-32 factor, alpha 32. Merges into
# the weights.
_base_ = ['./peft-targets.py']
peft_method = dict(type='peft', config=dict(type='LoKrConfig', r=32, alpha=32, target_modules={{_base_.peft_targets}}))
peft_method_hooks = []
