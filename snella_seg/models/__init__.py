"""The mmseg models: the backbones (one module per family), the frozen-base wrappers and checkpoint reading."""
from .backbones import TimmViT
from .peft_backbone import PEFTBackbone
from .snella_backbone import FrozenBaseBackbone, SNELLABackbone

__all__ = ['FrozenBaseBackbone', 'PEFTBackbone', 'SNELLABackbone', 'TimmViT']
