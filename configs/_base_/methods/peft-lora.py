# LoRA through huggingface peft (Hu et al., ICLR 2022): rank 32, lora_alpha 32 (scale 1), as the project's fused LoRA
# (configs/baselines/lora_*) but as peft computes it, in a separate branch. Merges into the weights.
_base_ = ['./peft-targets.py']
peft_method = dict(type='peft', config=dict(type='LoraConfig', r=32, lora_alpha=32, lora_dropout=0.0,
                                            target_modules={{_base_.peft_targets}}))
peft_method_hooks = []
