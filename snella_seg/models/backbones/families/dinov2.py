"""The DINOv2 family: ViT-L/14 with LayerScale, without and with 4 registers.

Reads torch.hub's official ``dinov2_vit*14[_reg4]_pretrain.pth``, built as timm's ``VisionTransformer`` ('vit'
model type).
"""
from typing import Dict, Mapping

from timm.models import vision_transformer
from torch import Tensor

from .registry import ArchSpec, BackboneFamily, CheckpointFormat, register_family
from .vit import LARGE_OUT_INDICES, VIT


def is_official_dinov2(state: Mapping[str, Tensor]) -> bool:
    """Whether keys are official DINOv2's: the pretraining ``mask_token`` (which timm drops) beside ``blocks.N.*``.

    Args:
        state: A checkpoint's tensors.

    Returns:
        True for DINOv2's layout (EVA-02's and DINOv3's, which hold a mask token too, are tried first).
    """
    return 'mask_token' in state and any(k.startswith('blocks.') for k in state)


def dinov2_to_timm(state: Mapping[str, Tensor]) -> Dict[str, Tensor]:
    """Convert an official DINOv2 checkpoint with timm's own conversion.

    Drops the pretraining mask token; registers become timm's reg_token and the class token's position is folded
    into it (timm's DINOv2-with-registers embeds no prefix positions).

    Args:
        state: An official DINOv2 checkpoint.

    Returns:
        Its tensors under timm's names.
    """
    return vision_transformer._convert_dinov2(dict(state), model=None)


register_family(BackboneFamily(
    name='dinov2', model_type=VIT,
    archs={'dinov2-l': ArchSpec('vit', 'vit_large_patch14_dinov2', LARGE_OUT_INDICES, 14, 1024, 24),
           'dinov2-reg4-l': ArchSpec('vit', 'vit_large_patch14_reg4_dinov2', LARGE_OUT_INDICES, 14, 1024, 24)},
    formats=(CheckpointFormat('dinov2', is_official_dinov2, dinov2_to_timm,
                              'official DINOv2 (mask_token, blocks.N.*)'),)))
