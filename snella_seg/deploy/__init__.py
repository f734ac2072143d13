"""Deployment: merged checkpoints that run without SNELLA code, and exported trained tensors (safetensors)."""
from ..methods import NotMergeableError
from .deltas import delta_state, export_deltas, load_deltas, trained_state
from .merge import merge_checkpoint, merge_weights
from .merged_config import merged_config

__all__ = ['NotMergeableError', 'delta_state', 'export_deltas', 'load_deltas', 'merge_checkpoint', 'merge_weights',
           'merged_config', 'trained_state']
