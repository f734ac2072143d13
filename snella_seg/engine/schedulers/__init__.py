"""Parameter schedulers registered in mmseg's ``PARAM_SCHEDULERS``."""
from .warmup_poly_lr import WarmupPolyLR

__all__ = ['WarmupPolyLR']
