from .snella_backbone import SNELLABackbone

__all__ = ['SNELLABackbone']
