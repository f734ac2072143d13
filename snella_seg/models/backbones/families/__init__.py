"""Backbone families: one module each, registering its archs, checkpoint layouts and model type.

Each lands in ``BACKBONE_FAMILIES`` (see ``registry``); importing this package registers the shipped families.
"""
# Registration order is the order of named archs and model types in listings and messages.
from . import vit, sam, dinov2, clip, dinov3, eva02, sam2_hiera  # noqa: F401  (registers the shipped families)
from .registry import (BACKBONE_FAMILIES, ArchSpec, ArchSummary, BackboneFamily, BaseModel, CheckpointFormat,
                       ModelType, absorb_timm_block_inputs, checkpoint_formats, detect_format, families_of,
                       find_format, layout_for, model_types, named_archs, named_format, recognise_format,
                       register_family, summarize_timm_state, to_timm_keys)

__all__ = ['BACKBONE_FAMILIES', 'ArchSpec', 'ArchSummary', 'BackboneFamily', 'BaseModel', 'CheckpointFormat',
           'ModelType', 'absorb_timm_block_inputs', 'checkpoint_formats', 'detect_format', 'families_of',
           'find_format', 'layout_for', 'model_types', 'named_archs', 'named_format', 'recognise_format',
           'register_family', 'summarize_timm_state', 'to_timm_keys']
