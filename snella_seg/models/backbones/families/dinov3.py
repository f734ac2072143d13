"""The DINOv3 family: ViT-L/16 with RoPE, 4 storage tokens and LayerScale.

Reads the official ``dinov3_vit*16_pretrain_*.pth``, built as timm's ``Eva`` ('eva' model type).
"""
from typing import Dict, Mapping

from torch import Tensor

from .eva import EVA
from .registry import ArchSpec, BackboneFamily, CheckpointFormat, register_family
from .vit import LARGE_OUT_INDICES


def dinov3_to_timm(state: Mapping[str, Tensor]) -> Dict[str, Tensor]:
    """Official DINOv3 keys to timm's ``Eva`` names, as timm's own filter renames them.

    Left out: the pretraining mask token, RoPE's ``periods`` (timm recomputes them from the same temperature), the
    qkv bias mask, and the 7B's local-crop class norm. The qkv bias splits into timm's q and v biases; its k part
    is the one the mask zeroes, so it never acted.

    Args:
        state: An official DINOv3 checkpoint.

    Returns:
        Its tensors under timm's names.
    """
    converted = {}
    for key, value in state.items():
        if key == 'mask_token' or key.endswith(('.periods', '.bias_mask')) or key.startswith('local_cls_norm.'):
            continue
        if key.endswith('.attn.qkv.bias'):
            q_bias, _, v_bias = value.chunk(3)
            converted[key.replace('qkv.bias', 'q_bias')] = q_bias
            converted[key.replace('qkv.bias', 'v_bias')] = v_bias
            continue
        key = key.replace('storage_tokens', 'reg_token')
        key = key.replace('.ls1.gamma', '.gamma_1').replace('.ls2.gamma', '.gamma_2')
        converted[key] = value
    return converted


register_family(BackboneFamily(
    name='dinov3', model_type=EVA,
    archs={'dinov3-l': ArchSpec('eva', 'vit_large_patch16_dinov3', LARGE_OUT_INDICES, 16, 1024, 24)},
    # before DINOv2's layout, whose mask token DINOv3 checkpoints hold too
    formats=(CheckpointFormat('dinov3', lambda state: 'storage_tokens' in state, dinov3_to_timm,
                              'DINOv3 (storage_tokens)', precedence=1),)))
