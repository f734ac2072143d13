"""The SAM 2 Hiera family: SAM 2 / 2.1 image encoders' trunks, for ``TimmHiera``.

Reads official ``sam2*_hiera_*.pt`` checkpoints and timm's ``HieraDet`` state dicts; defines the 'hiera' model
type (timm's ``HieraDet``).
"""
from functools import partial
from typing import Dict, List, Mapping, Tuple

import torch.nn.functional as F
from timm.models import hieradet_sam2
from torch import Tensor, nn

from ...absorption import absorb_into_mlp, absorb_into_qkv
from .registry import (ArchSpec, BackboneFamily, CheckpointFormat, ModelType, checkpoint_formats, find_format,
                       named_format, register_family)

SAM2_TRUNK_PREFIX = 'image_encoder.trunk.'
# Where each layout keeps the trunk: keys outside it are left out by design and counted.
TRUNK_PREFIXES = {'sam2': SAM2_TRUNK_PREFIX, 'timm': ''}
HIERA_OUT_INDICES = (0, 1, 2, 3)


def hiera_to_timm_keys(state: Mapping[str, Tensor],
                       checkpoint_format: str) -> Tuple[Dict[str, Tensor], Dict[str, int], str]:
    """(timm ``HieraDet`` state, tensor counts of the groups left out, format read) of a Hiera checkpoint.

    The official SAM 2 / 2.1 checkpoint (``sam2_hiera_large.pt``: ``{'model': ...}``) holds the whole video model;
    only its image encoder's trunk (``image_encoder.trunk.*``) is the backbone. The FPN neck (``image_encoder.neck``),
    prompt encoder, mask decoder and memory modules are left out by design and counted by their first two name
    parts. Keys are renamed by timm's own filter (SAM 2's ``mlp.layers.0/1`` are timm's ``mlp.fc1/fc2``).

    Args:
        state: A checkpoint's tensors.
        checkpoint_format: 'sam2', 'timm' or 'auto' (told from the keys).

    Returns:
        The trunk under timm's names, the left-out groups' tensor counts, and the format read.

    Raises:
        ValueError: If the format is unknown or cannot be told from the keys.
    """
    if checkpoint_format not in checkpoint_formats('TimmHiera'):
        raise ValueError(f'checkpoint_format must be one of {checkpoint_formats("TimmHiera")}, '
                         f'got {checkpoint_format!r}')
    if checkpoint_format == 'auto':
        found = find_format(state, backbone='TimmHiera')
        if found is None:
            raise ValueError(f'cannot tell a Hiera checkpoint format from its keys (first: {list(state)[:6]}); '
                             'expected official SAM 2 (image_encoder.trunk.*) or timm HieraDet (pos_embed_window, '
                             'blocks.N.*) keys; a SAM (v1) ViT checkpoint goes with TimmViT')
        layout = found[1]
    else:
        layout = named_format(checkpoint_format, 'TimmHiera')[1]
    prefix = TRUNK_PREFIXES[layout.name]
    ignored: Dict[str, int] = {}
    for key in state:
        if not key.startswith(prefix):
            group = '.'.join(key.split('.')[:2]) if key.startswith('image_encoder.') else key.split('.')[0]
            ignored[group] = ignored.get(group, 0) + 1
    return layout.to_timm_keys(state), ignored, layout.name


def _trunk_to_timm(state: Mapping[str, Tensor], prefix: str) -> Dict[str, Tensor]:
    """Return the trunk under ``prefix``, renamed to ``HieraDet``'s names by timm's own filter."""
    return hieradet_sam2.checkpoint_filter_fn(dict(state), prefix=prefix)


def fit_hiera_to_model(state: Dict[str, Tensor], model: nn.Module) -> Dict[str, Tensor]:
    """Resize a global position table of another size to the model's.

    Bicubically, as Hiera resizes it at every forward. The window table is tiled, not resized: one of another size
    stays and is reported as a mismatch.

    Args:
        state: Weights under timm's names.
        model: The built timm ``HieraDet``.

    Returns:
        The fitted weights.
    """
    pos = state.get('pos_embed')
    if pos is None or pos.ndim != 4 or pos.shape[-2:] == model.pos_embed.shape[-2:]:
        return state
    resized = F.interpolate(pos.float(), size=model.pos_embed.shape[-2:], mode='bicubic').to(pos.dtype)
    return {**state, 'pos_embed': resized}


def absorb_into_hiera_block(block: nn.Module) -> List[str]:
    """Absorb the norms of timm's HieraDet MultiScaleBlock (SAM 2) into the adapted layers they feed.

    norm1 feeds qkv alone only in a global block that keeps the width; windowed blocks pad the normalized tokens
    with zeros (normalizing after padding would differ), and a stage's first block also feeds norm1 to its skip
    ``proj``. norm2 feeds the Mlp alone in every block.

    Args:
        block: A ``hieradet_sam2.MultiScaleBlock``.

    Returns:
        The absorbed modules' names inside the block.
    """
    changed = []
    if (not block.is_windowed and block.dim == block.dim_out
            and type(block.attn) is hieradet_sam2.MultiScaleAttention):
        changed += absorb_into_qkv(block.norm1, block.attn.qkv)
    return changed + absorb_into_mlp(block.norm2, block.mlp)


HIERA = ModelType(name='hiera', fit=fit_hiera_to_model,
                  absorption_rules={hieradet_sam2.MultiScaleBlock: absorb_into_hiera_block})

register_family(BackboneFamily(
    name='sam2_hiera', model_type=HIERA, backbone='TimmHiera',
    archs={'sam2-hiera-t': ArchSpec('hiera', 'sam2_hiera_tiny', HIERA_OUT_INDICES, 4, 96, 12),
           'sam2-hiera-s': ArchSpec('hiera', 'sam2_hiera_small', HIERA_OUT_INDICES, 4, 96, 16),
           'sam2-hiera-b-plus': ArchSpec('hiera', 'sam2_hiera_base_plus', HIERA_OUT_INDICES, 4, 112, 24),
           'sam2-hiera-l': ArchSpec('hiera', 'sam2_hiera_large', HIERA_OUT_INDICES, 4, 144, 48)},
    formats=(
        # before SAM's layout, whose image_encoder.* prefix SAM 2 checkpoints share
        CheckpointFormat('sam2', lambda state: any(k.startswith(SAM2_TRUNK_PREFIX) for k in state),
                         partial(_trunk_to_timm, prefix=SAM2_TRUNK_PREFIX),
                         'official SAM 2 (image_encoder.trunk.*)', precedence=1),
        # after TimmViT's catch-all timm layout, which read a HieraDet state dict before this family was added
        CheckpointFormat('timm', lambda state: 'pos_embed_window' in state, partial(_trunk_to_timm, prefix=''),
                         'timm HieraDet (pos_embed_window, blocks.N.*)', precedence=-2))))
