"""The registered mmseg backbones: timm encoders built from their official checkpoints, ready for SNELLA."""
from .hiera import TimmHiera
from .vit import TimmViT

__all__ = ['TimmHiera', 'TimmViT']
