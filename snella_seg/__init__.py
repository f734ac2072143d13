"""snella-seg: SNELLA sparse kernelized fine-tuning for mmsegmentation.

``snella_seg.snella`` is the pure-PyTorch method; importing ``snella_seg`` also registers the OpenMMLab
components (backbones, optimizer constructor, hooks, metric) in mmsegmentation's registries.
"""
from .compat import ensure_mmcv_ops_importable, quiet_third_party_warnings

quiet_third_party_warnings()
ensure_mmcv_ops_importable()

from . import engine, evaluation, models, snella  # noqa: E402,F401
from .datasets import kvasir  # noqa: E402,F401  (registers KvasirSEGDataset, LoadBinaryMask)

__version__ = '0.1.0'
