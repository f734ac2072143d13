"""The training loop's side of SNELLA, registered for mmengine's Runner: hooks, optimizers, schedulers."""
from .hooks import (FiniteTrainingHook, RankZeroBuffersHook, ResumeCompatibilityHook, RNGStateHook,
                    SNELLAAllocatorHook)
from .optimizers import CPUAmpOptimWrapper, GuardedAmpOptimWrapper, SNELLAOptimWrapperConstructor
from .schedulers import WarmupPolyLR

__all__ = ['CPUAmpOptimWrapper', 'FiniteTrainingHook', 'GuardedAmpOptimWrapper', 'RNGStateHook', 'RankZeroBuffersHook',
           'ResumeCompatibilityHook', 'SNELLAAllocatorHook', 'SNELLAOptimWrapperConstructor', 'WarmupPolyLR']
