"""Tiny timm image encoders (width 32, 2 blocks, 8 px patches) that read any image size, padding to whole patches:
a ViT with a class token, and a SAM encoder whose first block is windowed and second global with relative positions.
"""
from functools import partial

from timm.layers import Format, PatchEmbed
from timm.models.vision_transformer import VisionTransformer
from timm.models.vision_transformer_sam import VisionTransformerSAM
from torch import nn

WIDTH, DEPTH, PATCH = 32, 2, 8


def tiny_timm_vit(**overrides) -> nn.Module:
    """timm's VisionTransformer, tiny, returning every token (so that every block's every token can matter);
    ``overrides`` (e.g. ``drop_path_rate``) go to its constructor."""
    return VisionTransformer(**{**dict(img_size=32, patch_size=PATCH, embed_dim=WIDTH, depth=DEPTH, num_heads=2,
                                       num_classes=0, global_pool='', dynamic_img_size=True, dynamic_img_pad=True),
                                **overrides})


def tiny_timm_sam(**overrides) -> nn.Module:
    """timm's VisionTransformerSAM, tiny: block 0 windowed (window 2), block 1 global, relative positions."""
    embed = partial(PatchEmbed, output_fmt=Format.NHWC, strict_img_size=False, dynamic_img_pad=True)
    return VisionTransformerSAM(**{**dict(img_size=32, patch_size=PATCH, embed_dim=WIDTH, depth=DEPTH, num_heads=2,
                                          window_size=2, global_attn_indexes=(1,), use_rel_pos=True, neck_chans=16,
                                          num_classes=0, embed_layer=embed), **overrides})


TINY_TIMM = {'vit': tiny_timm_vit, 'sam': tiny_timm_sam}
