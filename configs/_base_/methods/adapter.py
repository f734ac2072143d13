# Adapter (Houlsby et al., ICML 2019): a sequential bottleneck (width 64, GELU) after attention and after the MLP of
# every block, identity at initialisation. Cannot be merged.
peft_method = dict(type='adapter', bottleneck=64, dropout=0.0)
peft_method_hooks = []
