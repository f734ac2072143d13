from .vit import TimmViT

__all__ = ['TimmViT']
