"""Tiny TimmViT architectures (embed_dim 64, 4 blocks), built by the same code as the full-size ones."""
TINY_SAM = dict(family='sam', embed_dim=64, depth=4, num_heads=2, global_attn_indexes=(1, 3), window_size=2)
TINY_VIT = dict(family='vit', embed_dim=64, depth=4, num_heads=2)
