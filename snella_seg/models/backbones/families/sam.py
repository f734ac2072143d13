"""The Segment Anything family: SAM-B/L/H image encoders.

Reads official SAM checkpoints; defines the 'sam' model type (timm's ``VisionTransformerSAM``, with
``sam_attention``'s memory-saving blocks swapped in by ``TimmViT``).
"""
from functools import partial
from typing import Dict, List, Mapping

from timm.layers import Format, PatchEmbed, resample_abs_pos_embed_nhwc
from timm.models import vision_transformer_sam
from torch import Tensor, nn

from ...absorption import absorb_into_mlp, absorb_into_qkv
from ...checkpoints import resize_rel_pos
from ..sam_attention import BiasRecomputingAttention, WindowedQkvBlock
from .registry import ArchSpec, BackboneFamily, BaseModel, CheckpointFormat, ModelType, register_family
from .vit import LARGE_OUT_INDICES

# Official SAM encoders use LayerNorm eps 1e-6; timm's samvit defaults to 1e-5, which would shift every feature.
SAM_NORM_LAYER = partial(nn.LayerNorm, eps=1e-6)
# timm's samvit patch embedding (NHWC, any grid), padding images bottom/right to whole patches as the ViT's does.
SAM_PATCH_EMBED = partial(PatchEmbed, output_fmt=Format.NHWC, strict_img_size=False, dynamic_img_pad=True)
# SAM attentions whose forward uses its input only for qkv (and its shape)
SAM_ATTENTIONS = (vision_transformer_sam.Attention, BiasRecomputingAttention)


def is_official_sam(state: Mapping[str, Tensor]) -> bool:
    """Whether keys are official SAM's: ``image_encoder.*`` (a whole SAM) or a bare encoder's ``mlp.lin1``.

    Args:
        state: A checkpoint's tensors.

    Returns:
        True for SAM's layout.
    """
    return any(k.startswith('image_encoder.') or '.mlp.lin1.' in k for k in state)


def sam_to_timm(state: Mapping[str, Tensor]) -> Dict[str, Tensor]:
    """Rename official SAM keys to timm's; the prompt encoder and mask decoder are left out.

    timm's SAM filter strips ``image_encoder.`` and renames ``mlp.lin*``; a bare encoder gets the prefix first.

    Args:
        state: An official SAM checkpoint, whole or its image encoder alone.

    Returns:
        The encoder's tensors under timm's names.
    """
    if not any(k.startswith('image_encoder.') for k in state):
        state = {f'image_encoder.{k}': v for k, v in state.items()}
    return vision_transformer_sam.checkpoint_filter_fn(state, model=None)


def fit_sam_to_model(state: Dict[str, Tensor], model: nn.Module) -> Dict[str, Tensor]:
    """Resize SAM's absolute embedding and its global blocks' relative tables to the model's image size.

    timm's SAM filter only renames keys. Windowed blocks keep their window-sized tables; a global block's table
    spans the whole grid (``2 * grid - 1`` rows) and is resized linearly, as SAM itself does at run time.

    Args:
        state: Weights under timm's names.
        model: The built timm ``VisionTransformerSAM``.

    Returns:
        The fitted weights.
    """
    pos = state.get('pos_embed')
    if pos is None or pos.ndim != 4 or model.pos_embed is None:
        return state
    fitted = dict(state)
    checkpoint_grid = pos.shape[1:3]
    fitted['pos_embed'] = resample_abs_pos_embed_nhwc(pos, list(model.pos_embed.shape[1:3]))
    for index, block in enumerate(model.blocks):
        if block.window_size or not block.attn.use_rel_pos:
            continue
        for axis, checkpoint_side in zip('hw', checkpoint_grid):
            key = f'blocks.{index}.attn.rel_pos_{axis}'
            target_rows = getattr(block.attn, f'rel_pos_{axis}').shape[0]
            table = fitted.get(key)
            if table is not None and table.shape[0] == 2 * checkpoint_side - 1 != target_rows:
                fitted[key] = resize_rel_pos(table, target_rows)
    return fitted


def absorb_into_sam_block(block: nn.Module) -> List[str]:
    """Absorb the norms of timm's SAM Block or a ``WindowedQkvBlock`` into the adapted layers they feed.

    norm1 feeds qkv alone unless timm's windowed block pads the normalized tokens with zeros before qkv
    (normalizing after padding would differ; ``WindowedQkvBlock`` pads after qkv).

    Args:
        block: A ``vision_transformer_sam.Block`` or ``WindowedQkvBlock``.

    Returns:
        The absorbed modules' names inside the block.
    """
    pads_after_norm1 = type(block) is vision_transformer_sam.Block and block.window_size > 0
    changed = []
    if not pads_after_norm1 and type(block.attn) in SAM_ATTENTIONS:
        changed += absorb_into_qkv(block.norm1, block.attn.qkv)
    return changed + absorb_into_mlp(block.norm2, block.mlp)


SAM = ModelType(
    name='sam', fit=fit_sam_to_model,
    absorption_rules={vision_transformer_sam.Block: absorb_into_sam_block, WindowedQkvBlock: absorb_into_sam_block},
    holds=lambda state: (state.get('pos_embed') is not None and state['pos_embed'].ndim == 4)
    or any('rel_pos_h' in k for k in state),
    build_args=dict(norm_layer=SAM_NORM_LAYER, embed_layer=SAM_PATCH_EMBED),
    base_model=BaseModel('samvit_base_patch16', vision_transformer_sam.VisionTransformerSAM,
                         ('patch_size', 'embed_dim', 'depth', 'num_heads', 'global_attn_indexes', 'window_size',
                          'use_rel_pos', 'img_size'), dict(patch_size=16, use_rel_pos=True)),
    final_norm=False,
    timm_backbone_refusal="mmseg's TIMMBackbone cannot build SAM's LayerNorm(eps=1e-6): timm would use eps 1e-5")

register_family(BackboneFamily(
    name='sam', model_type=SAM,
    archs={'sam-b': ArchSpec('sam', 'samvit_base_patch16', (3, 5, 7, 11), 16, 768, 12),
           'sam-l': ArchSpec('sam', 'samvit_large_patch16', LARGE_OUT_INDICES, 16, 1024, 24),
           'sam-h': ArchSpec('sam', 'samvit_huge_patch16', (7, 15, 23, 31), 16, 1280, 32)},
    formats=(CheckpointFormat('sam', is_official_sam, sam_to_timm, 'official SAM (image_encoder.*)'),)))
