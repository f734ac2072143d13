"""Where SNELLA layers may compute the frozen module before them (see ``snella.absorb_activation``).

Absorbing is exact only where that module's output feeds the layer and nothing else, which depends on each
architecture's forward code: these rules name the timm modules whose forward was read, and check the settings
that keep it true (no dropout or norm between the MLP activation and fc2, no gate beside qkv, no window padding
between SAM's norm1 and qkv: timm's windowed block pads before qkv, ``WindowedQkvBlock`` after it). Anything else
is left alone.
"""
from typing import List

from timm.layers import Attention, Mlp, SwiGLU
from timm.models import eva, hieradet_sam2, vision_transformer, vision_transformer_sam
from torch import nn

from ..snella import SNELLALinear, absorb_activation
from .backbones.sam_attention import BiasRecomputingAttention, WindowedQkvBlock

# SAM attentions whose forward uses its input only for qkv (and its shape)
SAM_ATTENTIONS = (vision_transformer_sam.Attention, BiasRecomputingAttention)


def _does_nothing(module: nn.Module) -> bool:
    return isinstance(module, nn.Identity) or (isinstance(module, nn.Dropout) and module.p == 0)


def _adapted(layer: nn.Module) -> bool:
    return isinstance(layer, SNELLALinear) and layer.absorbed is None


def _absorb_into_mlp(norm: nn.Module, mlp: nn.Module, changed: List[str], name: str) -> None:
    """timm's Mlp: fc1 -> act -> drop1 -> norm -> fc2 -> drop2; its input is used by fc1 only."""
    if type(mlp) is not Mlp:
        return
    if _adapted(mlp.fc1):
        absorb_activation(norm, mlp.fc1)
        changed.append(f'{name}.norm2')
    if _adapted(mlp.fc2) and _does_nothing(mlp.drop1) and _does_nothing(mlp.norm):
        absorb_activation(mlp.act, mlp.fc2)
        changed.append(f'{name}.mlp.act')


def _absorb_into_swiglu(mlp: nn.Module, changed: List[str], name: str) -> None:
    """timm's SwiGLU: fc1_g, fc1_x -> act(gate) * x -> drop1 -> norm -> fc2 -> drop2. Its input feeds two
    layers, so norm2 stays; EVA-02's LayerNorm before fc2 feeds fc2 alone."""
    if type(mlp) is SwiGLU and not _does_nothing(mlp.norm) and _does_nothing(mlp.drop1) and _adapted(mlp.fc2):
        absorb_activation(mlp.norm, mlp.fc2)
        changed.append(f'{name}.mlp.norm')


def _absorb_into_eva_block(block: nn.Module, changed: List[str], name: str) -> None:
    """timm's EvaBlock (DINOv3, EVA-02): norm1 feeds a fused, bias-free qkv alone when there is no gate (with a
    q/v bias timm calls F.linear on qkv's weight, bypassing the layer; q, k, v apart share norm1)."""
    attn = block.attn
    if (type(attn) is eva.EvaAttention and attn.gate is None and attn.qkv is not None and attn.q_bias is None
            and _adapted(attn.qkv)):
        absorb_activation(block.norm1, attn.qkv)
        changed.append(f'{name}.norm1')
    _absorb_into_mlp(block.norm2, block.mlp, changed, name)
    _absorb_into_swiglu(block.mlp, changed, name)


def _absorb_into_hiera_block(block: nn.Module, changed: List[str], name: str) -> None:
    """timm's HieraDet MultiScaleBlock (SAM 2): norm1 feeds qkv alone only in a global block that keeps the width;
    windowed blocks pad the normalized tokens with zeros (normalizing after padding would differ), and a
    stage's first block also feeds norm1 to its skip ``proj``. norm2 feeds the Mlp alone in every block."""
    attn = block.attn
    if (not block.is_windowed and block.dim == block.dim_out and type(attn) is hieradet_sam2.MultiScaleAttention
            and _adapted(attn.qkv)):
        absorb_activation(block.norm1, attn.qkv)
        changed.append(f'{name}.norm1')
    _absorb_into_mlp(block.norm2, block.mlp, changed, name)


def absorb_timm_block_inputs(model: nn.Module) -> List[str]:
    """In timm ViT, SAM, Eva and SAM 2 Hiera blocks, let adapted qkv/fc1 compute the LayerNorm before them and fc2
    the MLP activation (or SwiGLU's LayerNorm). Returns the absorbed modules' names."""
    changed: List[str] = []
    for name, block in model.named_modules():
        if type(block) is vision_transformer.Block:
            # Attention uses its input for qkv only (and its shape) unless gated
            if (type(block.attn) is Attention and getattr(block.attn, 'gate', None) is None
                    and _adapted(block.attn.qkv)):
                absorb_activation(block.norm1, block.attn.qkv)
                changed.append(f'{name}.norm1')
            _absorb_into_mlp(block.norm2, block.mlp, changed, name)
        elif type(block) in (vision_transformer_sam.Block, WindowedQkvBlock):
            # timm's windowed blocks pad the normalized tokens with zeros: normalizing after padding would differ
            pads_after_norm1 = type(block) is vision_transformer_sam.Block and block.window_size > 0
            if not pads_after_norm1 and type(block.attn) in SAM_ATTENTIONS and _adapted(block.attn.qkv):
                absorb_activation(block.norm1, block.attn.qkv)
                changed.append(f'{name}.norm1')
            _absorb_into_mlp(block.norm2, block.mlp, changed, name)
        elif type(block) is eva.EvaBlock:
            _absorb_into_eva_block(block, changed, name)
        elif type(block) is hieradet_sam2.MultiScaleBlock:
            _absorb_into_hiera_block(block, changed, name)
    return changed
