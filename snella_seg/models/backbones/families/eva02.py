"""The EVA-02 family: L/14 with RoPE, SwiGLU and q/k/v apart.

Reads the EVA-02 release's ``eva02_*_pt_*.pt``, built as timm's ``Eva`` ('eva' model type).
"""
import re
from typing import Dict, Mapping

from torch import Tensor

from ...checkpoints import rename_keys
from .eva import EVA
from .registry import ArchSpec, BackboneFamily, CheckpointFormat, register_family
from .vit import LARGE_OUT_INDICES

# EVA-02 release -> timm Eva (timm's eva.checkpoint_filter_fn renames, without its model-dependent resizing)
EVA02_TO_TIMM = (
    (r'\.mlp\.ffn_ln\.', '.mlp.norm.'),
    (r'\.attn\.inner_attn_ln\.', '.attn.norm.'),
    (r'\.mlp\.w12\.', '.mlp.fc1.'),
    (r'\.mlp\.w1\.', '.mlp.fc1_g.'),
    (r'\.mlp\.w2\.', '.mlp.fc1_x.'),
    (r'\.mlp\.w3\.', '.mlp.fc2.'),
)
# With q, k and v apart, the release's q/v biases are the projections' own.
SEPARATE_QKV_BIASES = ((r'\.attn\.(q|v)_bias$', r'.attn.\1_proj.bias'),)


def is_eva02_release(state: Mapping[str, Tensor]) -> bool:
    """Whether keys are the EVA-02 release's: its MLP (``mlp.w1``/``w12``) or ``attn.q_bias`` beside a mask token.

    Args:
        state: A checkpoint's tensors.

    Returns:
        True for EVA-02's layout.
    """
    return 'mask_token' in state and any(k.endswith(('.mlp.w1.weight', '.mlp.w12.weight', '.attn.q_bias'))
                                         for k in state)


def eva02_to_timm(state: Mapping[str, Tensor]) -> Dict[str, Tensor]:
    """EVA-02 release keys (MIM pretraining) to timm's ``Eva`` names.

    Left out: the pretraining mask token and ``lm_head``, and the RoPE tables (``rope.freqs_cos/sin``, also under
    ``blocks.N.attn.rope.`` in fine-tuning code), which timm recomputes for the grid of every input. With q, k and v
    apart, ``attn.q_bias``/``attn.v_bias`` are the q and v projections' biases (k has none).

    Args:
        state: An EVA-02 release checkpoint.

    Returns:
        Its tensors under timm's names.
    """
    separate_qkv = any(k.endswith('.attn.q_proj.weight') for k in state)
    kept = {k: v for k, v in state.items()
            if not (k == 'mask_token' or k.startswith('lm_head.') or re.search(r'(^|\.)rope\.', k))}
    return rename_keys(kept, EVA02_TO_TIMM + (SEPARATE_QKV_BIASES if separate_qkv else ()))


register_family(BackboneFamily(
    name='eva02', model_type=EVA,
    archs={'eva02-l': ArchSpec('eva', 'eva02_large_patch14_224', LARGE_OUT_INDICES, 14, 1024, 24)},
    # before DINOv2's layout, whose mask token EVA-02 checkpoints hold too
    formats=(CheckpointFormat('eva02', is_eva02_release, eva02_to_timm, 'EVA-02 (mask_token, blocks.N.mlp.w1)',
                              precedence=1),)))
