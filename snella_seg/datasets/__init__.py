"""Demo data sets and data folder checks; both work without OpenMMLab."""
from .demo_data import (ADE20K_CLASS_IDS, CUSTOM_CLASS_IDS, DEMO_CLASSES, PASCAL_CONTEXT_CLASS_IDS, make_ade20k_like,
                        make_custom_like, make_pascal_context_like)
from .config_checks import check_config_datasets
from .validation import DatasetError, check_segmentation_folder

__all__ = ['ADE20K_CLASS_IDS', 'CUSTOM_CLASS_IDS', 'DEMO_CLASSES', 'PASCAL_CONTEXT_CLASS_IDS', 'make_ade20k_like',
           'make_custom_like', 'make_pascal_context_like', 'DatasetError', 'check_config_datasets',
           'check_segmentation_folder']
