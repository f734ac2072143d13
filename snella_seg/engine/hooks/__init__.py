"""mmengine hooks registered in mmseg's ``HOOKS``, one per file."""
from .adalora_hook import AdaLoRAHook
from .allocator_hook import SNELLAAllocatorHook
from .finite_training_hook import FiniteTrainingHook
from .rank_zero_buffers_hook import RankZeroBuffersHook
from .resume_compatibility_hook import ResumeCompatibilityHook
from .rng_state_hook import RNGStateHook

__all__ = ['AdaLoRAHook', 'FiniteTrainingHook', 'RNGStateHook', 'RankZeroBuffersHook', 'ResumeCompatibilityHook',
           'SNELLAAllocatorHook']
