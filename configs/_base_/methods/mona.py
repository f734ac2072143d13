# Mona (Yin et al., CVPR 2025): a multi-scale depthwise-convolution adapter (width 64; 3x3, 5x5, 7x7) after attention
# and after the MLP of every block. Cannot be merged.
peft_method = dict(type='mona', bottleneck=64, dropout=0.1)
peft_method_hooks = []
