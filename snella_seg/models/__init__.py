from .backbones import TimmViT
from .peft_backbone import PEFTBackbone
from .snella_backbone import FrozenBaseBackbone, SNELLABackbone

__all__ = ['FrozenBaseBackbone', 'PEFTBackbone', 'SNELLABackbone', 'TimmViT']
