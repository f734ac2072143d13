# DoRA through huggingface peft (Liu et al., ICML 2024): LoRA rank 32, lora_alpha 32, with the weight's magnitude
# trained apart from its direction. Merges into the weights.
_base_ = ['./peft-targets.py']
peft_method = dict(type='peft', config=dict(type='LoraConfig', r=32, lora_alpha=32, lora_dropout=0.0, use_dora=True,
                                            target_modules={{_base_.peft_targets}}))
peft_method_hooks = []
