from .hiera import TimmHiera
from .vit import TimmViT

__all__ = ['TimmHiera', 'TimmViT']
