# LN-Tune: every LayerNorm's scale and shift of the encoder trains, nothing is added. Merges (nothing to fold).
peft_method = dict(type='ln_tune')
peft_method_hooks = []
