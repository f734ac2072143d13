# Partial-1: the last transformer block of the encoder trains in full. Merges (nothing to fold).
peft_method = dict(type='partial', k=1)
peft_method_hooks = []
