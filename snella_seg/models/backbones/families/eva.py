"""The 'eva' model type: timm's ``Eva``, which DINOv3 and EVA-02 are built as.

Holds its fitting and the absorption rule of its ``EvaBlock``, written once for both families.
"""
from typing import Dict, List

from timm.layers import SwiGLU
from timm.models import eva
from torch import Tensor, nn

from ...absorption import absorb_into_mlp, absorb_into_qkv, adapted, does_nothing
from ....snella import absorb_activation
from .registry import ModelType
from .vit import DYNAMIC_SIZE_ARGS


def fit_eva_to_model(state: Dict[str, Tensor], model: nn.Module) -> Dict[str, Tensor]:
    """Fit Eva weights to the model: resample ``pos_embed``, drop an all-zero q/v bias the model lacks.

    The resampling (EVA-02) is timm's own checkpoint filter.

    DINOv3's distilled ViT-S/B/L were released with a qkv bias that is all zeros, and timm builds them without one
    (with one, timm's attention would bypass the qkv Linear that SNELLA adapts). A non-zero bias stays, so the
    comparison with the model reports it and nothing loads.

    Args:
        state: Weights under timm's names.
        model: The built timm ``Eva``.

    Returns:
        The fitted weights.
    """
    fitted = eva.checkpoint_filter_fn(state, model)
    for key in [k for k in fitted if k.endswith(('.attn.q_bias', '.attn.v_bias'))]:
        owner, _, name = key.rpartition('.')
        if getattr(model.get_submodule(owner), name, None) is None and not fitted[key].any():
            del fitted[key]
    return fitted


def absorb_into_swiglu(mlp: nn.Module) -> List[str]:
    """Absorb the LayerNorm inside timm's SwiGLU into its fc2.

    SwiGLU runs fc1_g, fc1_x -> act(gate) * x -> drop1 -> norm -> fc2 -> drop2. Its input feeds two layers, so
    norm2 stays; EVA-02's LayerNorm before fc2 feeds fc2 alone.

    Args:
        mlp: A block's ``mlp``; anything but an exact ``SwiGLU`` is left alone.

    Returns:
        ['mlp.norm'] if absorbed, else [].
    """
    if type(mlp) is SwiGLU and not does_nothing(mlp.norm) and does_nothing(mlp.drop1) and adapted(mlp.fc2):
        absorb_activation(mlp.norm, mlp.fc2)
        return ['mlp.norm']
    return []


def absorb_into_eva_block(block: nn.Module) -> List[str]:
    """Absorb the norms of timm's EvaBlock (DINOv3, EVA-02) into the adapted layers they feed.

    norm1 feeds a fused, bias-free qkv alone when there is no gate (with a q/v bias timm calls F.linear on qkv's
    weight, bypassing the layer; q, k, v apart share norm1).

    Args:
        block: An ``eva.EvaBlock``.

    Returns:
        The absorbed modules' names inside the block.
    """
    attn = block.attn
    changed = []
    if type(attn) is eva.EvaAttention and attn.gate is None and attn.qkv is not None and attn.q_bias is None:
        changed += absorb_into_qkv(block.norm1, attn.qkv)
    return changed + absorb_into_mlp(block.norm2, block.mlp) + absorb_into_swiglu(block.mlp)


EVA = ModelType(
    name='eva', fit=fit_eva_to_model, absorption_rules={eva.EvaBlock: absorb_into_eva_block},
    # LayerScale as gamma_1 (DINOv3), q/k/v apart or SwiGLU (EVA-02)
    holds=lambda state: any(k.endswith(('.gamma_1', '.attn.q_proj.weight', '.mlp.fc1_g.weight')) for k in state),
    build_args=DYNAMIC_SIZE_ARGS,
    timm_backbone_refusal="Eva encoders (DINOv3, EVA-02) stay TimmViT: mmseg's TIMMBackbone would return their "
                          'padded grid without the resampling, and it is untested with their rotary embeddings')
