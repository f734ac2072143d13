# SSF (Lian et al., NeurIPS 2022): a learned scale and shift after every norm and Linear of every block, identity at
# initialisation. Merges into the weights.
peft_method = dict(type='ssf', init_std=0.0)
peft_method_hooks = []
