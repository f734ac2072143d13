"""The optimizer wrapper constructor (``OPTIM_WRAPPER_CONSTRUCTORS``) and optimizer wrappers (``OPTIM_WRAPPERS``)."""
from .cpu_amp_optim_wrapper import CPUAmpOptimWrapper
from .guarded_amp_optim_wrapper import GuardedAmpOptimWrapper
from .snella_optim_wrapper_constructor import SNELLAOptimWrapperConstructor

__all__ = ['CPUAmpOptimWrapper', 'GuardedAmpOptimWrapper', 'SNELLAOptimWrapperConstructor']
