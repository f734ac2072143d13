# LoHa through huggingface peft (Hyeon-Woo et al., ICLR 2022): Hadamard product of two rank-32 products, alpha 32.
# Merges into the weights.
_base_ = ['./peft-targets.py']
peft_method = dict(type='peft', config=dict(type='LoHaConfig', r=32, alpha=32, target_modules={{_base_.peft_targets}}))
peft_method_hooks = []
