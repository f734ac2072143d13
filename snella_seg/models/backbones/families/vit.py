"""The plain ViT family: timm's AugReg ViT-B/L.

Reads timm's and mmseg's ``VisionTransformer`` checkpoint layouts; defines the 'vit' model type (timm's
``VisionTransformer``) that DINOv2 and CLIP are built as too.
"""
import re
from typing import Dict, List, Mapping

from timm.layers import Attention
from timm.models import vision_transformer
from torch import Tensor, nn

from ...absorption import absorb_into_mlp, absorb_into_qkv
from ...checkpoints import rename_keys
from .registry import ArchSpec, BackboneFamily, BaseModel, CheckpointFormat, ModelType, register_family

LARGE_OUT_INDICES = (7, 11, 15, 23)
# timm models that take plain-data arguments and pad images to whole patches by themselves (ViT and Eva);
# ``use_naflex=False`` keeps the classic model whatever timm's environment default.
DYNAMIC_SIZE_ARGS = dict(dynamic_img_size=True, dynamic_img_pad=True, use_naflex=False)
# mmseg VisionTransformer -> timm VisionTransformer (the inverse of mmseg's tools/model_converters/vit2mmseg.py).
MMSEG_TO_TIMM = (
    (r'^patch_embed\.projection\.', 'patch_embed.proj.'),
    (r'^ln_pre\.', 'norm_pre.'),
    (r'^ln1\.', 'norm.'),
    (r'^layers\.(\d+)\.ln1\.', r'blocks.\1.norm1.'),
    (r'^layers\.(\d+)\.ln2\.', r'blocks.\1.norm2.'),
    (r'^layers\.(\d+)\.attn\.attn\.in_proj_(weight|bias)$', r'blocks.\1.attn.qkv.\2'),
    (r'^layers\.(\d+)\.attn\.attn\.out_proj\.', r'blocks.\1.attn.proj.'),
    (r'^layers\.(\d+)\.ffn\.layers\.0\.0\.', r'blocks.\1.mlp.fc1.'),
    (r'^layers\.(\d+)\.ffn\.layers\.1\.', r'blocks.\1.mlp.fc2.'),
)


def mmseg_to_timm(state: Mapping[str, Tensor]) -> Dict[str, Tensor]:
    """Rename mmseg ``VisionTransformer`` keys to timm's; a whole-segmentor checkpoint contributes its ``backbone.*``.

    Args:
        state: An mmseg ViT (or segmentor) state dict.

    Returns:
        The backbone's tensors under timm's names.
    """
    if any(k.startswith('backbone.') for k in state):
        state = {k[len('backbone.'):]: v for k, v in state.items() if k.startswith('backbone.')}
    return rename_keys(state, MMSEG_TO_TIMM)


def fit_vit_to_model(state: Dict[str, Tensor], model: nn.Module) -> Dict[str, Tensor]:
    """Resample a plain ViT's ``pos_embed`` to the model's grid with timm's own checkpoint filter.

    A bias-free patch convolution (mmseg's default) gets a zero bias when the model has one: the same function.

    Args:
        state: Weights under timm's names.
        model: The built timm ``VisionTransformer``.

    Returns:
        The fitted weights.
    """
    fitted = vision_transformer.checkpoint_filter_fn(state, model)
    weight = fitted.get('patch_embed.proj.weight')
    if model.patch_embed.proj.bias is not None and weight is not None and 'patch_embed.proj.bias' not in fitted:
        fitted['patch_embed.proj.bias'] = weight.new_zeros(weight.shape[0])
    return fitted


def absorb_into_vit_block(block: nn.Module) -> List[str]:
    """Absorb the norms of timm's ViT Block into the adapted layers they feed.

    Its Attention uses its input for qkv only (and its shape) unless gated.

    Args:
        block: A ``vision_transformer.Block``.

    Returns:
        The absorbed modules' names inside the block.
    """
    changed = []
    if type(block.attn) is Attention and getattr(block.attn, 'gate', None) is None:
        changed += absorb_into_qkv(block.norm1, block.attn.qkv)
    return changed + absorb_into_mlp(block.norm2, block.mlp)


VIT = ModelType(
    name='vit', fit=fit_vit_to_model, absorption_rules={vision_transformer.Block: absorb_into_vit_block},
    build_args=DYNAMIC_SIZE_ARGS,
    base_model=BaseModel('vit_base_patch16_224', vision_transformer.VisionTransformer,
                         ('patch_size', 'embed_dim', 'depth', 'num_heads'), dict(patch_size=16)))

register_family(BackboneFamily(
    name='vit', model_type=VIT,
    archs={'vit-b': ArchSpec('vit', 'vit_base_patch16_224', (3, 5, 7, 11), 16, 768, 12),
           'vit-l': ArchSpec('vit', 'vit_large_patch16_224', LARGE_OUT_INDICES, 16, 1024, 24)},
    formats=(CheckpointFormat('mmseg', lambda state: any(re.match(r'(backbone\.)?layers\.\d+\.', k) for k in state),
                              mmseg_to_timm, 'mmseg ViT (layers.N.*)'),
             CheckpointFormat('timm', lambda state: any(k.startswith('blocks.') for k in state), dict,
                              'timm (blocks.N.*)', precedence=-1))))
