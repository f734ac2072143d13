# AdaptFormer (Chen et al., NeurIPS 2022): a parallel bottleneck (width 64) beside every MLP, scaled by 0.1, identity at
# initialisation. Cannot be merged.
peft_method = dict(type='adaptformer', bottleneck=64, scale=0.1, dropout=0.0)
peft_method_hooks = []
