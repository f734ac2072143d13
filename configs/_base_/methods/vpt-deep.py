# VPT-deep (Jia et al., ECCV 2022): 10 learned prompt tokens prepended at every block. Plain ViTs only (SAM's windowed
# grid blocks refuse prompts). Cannot be merged.
peft_method = dict(type='vpt_deep', num_tokens=10, dropout=0.0)
peft_method_hooks = []
