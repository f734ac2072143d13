"""The CLIP family: OpenAI's ViT-L/14 image tower (pre-norm, QuickGELU).

Reads OpenAI/OpenCLIP ``visual.*`` state dicts, built as timm's ``VisionTransformer`` ('vit' model type).
"""
from typing import Dict, Mapping

from timm.models import vision_transformer
from torch import Tensor

from .registry import ArchSpec, BackboneFamily, CheckpointFormat, register_family
from .vit import LARGE_OUT_INDICES, VIT


def is_clip(state: Mapping[str, Tensor]) -> bool:
    """Whether keys are a CLIP model's: a ``visual.class_embedding`` (under any prefix).

    Args:
        state: A checkpoint's tensors.

    Returns:
        True for the OpenAI/OpenCLIP layout.
    """
    return any(k.endswith('visual.class_embedding') for k in state)


def clip_to_timm(state: Mapping[str, Tensor]) -> Dict[str, Tensor]:
    """Convert the OpenAI layout (OpenCLIP saves the same) with timm's own conversion.

    Keeps the visual tower only, its output projection as a head (left out by the backbone, as is ln_post unless
    final_norm); the text tower is left out.

    Args:
        state: A CLIP state dict, e.g. OpenCLIP's ``open_clip_pytorch_model.bin``.

    Returns:
        The image tower's tensors under timm's names.
    """
    prefix = next(k for k in state if k.endswith('visual.class_embedding'))[:-len('class_embedding')]
    return vision_transformer._convert_openai_clip(state, model=None, prefix=prefix)


register_family(BackboneFamily(
    name='clip', model_type=VIT,
    archs={'clip-l': ArchSpec('vit', 'vit_large_patch14_clip_quickgelu_224', LARGE_OUT_INDICES, 14, 1024, 24)},
    formats=(CheckpointFormat('clip', is_clip, clip_to_timm, 'CLIP (visual.class_embedding)'),)))
