"""SNELLA in pure PyTorch: sparse kernelized low-rank updates and their bi-level sparsity allocator.

Nothing here imports OpenMMLab; the registered glue lives in ``snella_seg.models``, ``snella_seg.engine``.
"""
from .allocator import BiLevelAllocator
from .config import SNELLAConfig
from .inject import InjectionReport, absorb_activation, inject_snella, merge_snella
from .kernels import KERNELS, Kernel, get_kernel, kernel_matrix, register_kernel, sparsify
from .layer import SNELLALinear, SparseKernelDelta
from .masks import MASKS, Mask, get_mask, register_mask

__all__ = ['BiLevelAllocator', 'SNELLAConfig', 'InjectionReport', 'absorb_activation', 'inject_snella',
           'merge_snella', 'KERNELS', 'Kernel', 'get_kernel', 'kernel_matrix', 'register_kernel', 'sparsify',
           'SNELLALinear', 'SparseKernelDelta', 'MASKS', 'Mask', 'get_mask', 'register_mask']
