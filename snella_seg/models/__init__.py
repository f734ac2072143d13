from .backbones import TimmViT
from .snella_backbone import SNELLABackbone

__all__ = ['SNELLABackbone', 'TimmViT']
