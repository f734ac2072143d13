from .allocator_hook import SNELLAAllocatorHook
from .checkpoint_loading import UnsafeCheckpointError, load_checkpoint_safely
from .guards import FiniteTrainingHook, ResumeCompatibilityHook
from .optim_wrappers import CPUAmpOptimWrapper
from .optimizers import SNELLAOptimWrapperConstructor
from .param_schedulers import WarmupPolyLR
from .rng_state_hook import RNGStateHook

__all__ = ['CPUAmpOptimWrapper', 'FiniteTrainingHook', 'RNGStateHook', 'ResumeCompatibilityHook',
           'SNELLAAllocatorHook', 'SNELLAOptimWrapperConstructor', 'UnsafeCheckpointError', 'WarmupPolyLR',
           'load_checkpoint_safely']
