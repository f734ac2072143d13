"""Demo data sets and data folder checks; both work without OpenMMLab."""
from .demo_data import (ADE20K_CLASS_IDS, DEMO_CLASSES, PASCAL_CONTEXT_CLASS_IDS, make_ade20k_like,
                        make_pascal_context_like)
from .validation import DatasetError, check_segmentation_folder

# The lead may add OpenMMLab registrations (datasets, transforms) here.

__all__ = ['ADE20K_CLASS_IDS', 'DEMO_CLASSES', 'PASCAL_CONTEXT_CLASS_IDS', 'make_ade20k_like',
           'make_pascal_context_like', 'DatasetError', 'check_segmentation_folder']
