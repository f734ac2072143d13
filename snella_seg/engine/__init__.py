from .allocator_hook import SNELLAAllocatorHook
from .optim_wrappers import CPUAmpOptimWrapper
from .optimizers import SNELLAOptimWrapperConstructor

__all__ = ['CPUAmpOptimWrapper', 'SNELLAAllocatorHook', 'SNELLAOptimWrapperConstructor']
