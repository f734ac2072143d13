# The Linears huggingface peft's methods adapt: q, k, v (fused qkv), attention proj, fc1 and fc2 of every block, the
# layers SNELLA adapts.
peft_targets = r'.*blocks\.\d+\.(attn\.(qkv|proj)|mlp\.fc[12])'
