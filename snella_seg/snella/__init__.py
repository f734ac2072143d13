"""SNELLA in pure PyTorch: sparse kernelized low-rank updates and their bi-level sparsity allocator.

Nothing here imports OpenMMLab; the registered glue lives in ``snella_seg.models``, ``snella_seg.engine``.
"""
from .allocator import BiLevelAllocator
from .inject import InjectionReport, absorb_activation, inject_snella, merge_snella
from .kernels import KERNELS, MASKS, kernel_matrix, sparsify
from .layer import SNELLALinear, SparseKernelDelta

__all__ = ['BiLevelAllocator', 'InjectionReport', 'absorb_activation', 'inject_snella', 'merge_snella', 'KERNELS',
           'MASKS', 'kernel_matrix', 'sparsify', 'SNELLALinear', 'SparseKernelDelta']
