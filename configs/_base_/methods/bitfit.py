# BitFit (Ben Zaken et al., ACL 2022): every bias of the encoder trains, nothing is added. Merges (nothing to fold).
peft_method = dict(type='bitfit')
peft_method_hooks = []
