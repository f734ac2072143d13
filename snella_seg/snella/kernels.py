"""Kernel matrices and intra-layer sparsification of SNELLA (METHOD.md sections 1 and 2).

Pure functions over tensors so that the math can be unit-tested against hand-computed cases.
Every kernel returns ``M`` with shape ``(in_features, out_features)``; the weight update is ``M.T``.
"""
import math
from typing import Optional

import torch

KERNELS = ('linear', 'snell', 'snella')
MASKS = ('magnitude', 'binary')
# SNELL's fixed group coefficients c_h = 0.1 * (-1)**h for h = 0, 1: M = 0.1 * (d_0 - d_1).
DISTANCE_GROUPS = 2
DISTANCE_SCALE = 0.1
# Selection on the CPU: from this many entries on, a strided sample first narrows it to a band (a prime stride,
# so that the sample does not follow a matrix's rows or columns)
MIN_SAMPLED_SELECTION = 2 ** 16
SAMPLE_STRIDE = 61


def num_groups(kernel: str) -> int:
    """Factor groups H: two distance groups for the kernelized variants, one for LoRA."""
    return 1 if kernel == 'linear' else DISTANCE_GROUPS


def distance_kernel(in_factors: torch.Tensor, out_factors: torch.Tensor) -> torch.Tensor:
    """SNELL's difference of Euclidean distances between input and output factors."""
    dist = torch.cdist(in_factors, out_factors, p=2)  # (H, in, out)
    # sum_h 0.1 * (-1)**h * d_h, as two reductions instead of a signed copy of every plane
    return DISTANCE_SCALE * (dist[0::2].sum(dim=0) - dist[1::2].sum(dim=0))


def kernel_matrix(kernel: str,
                  in_factors: torch.Tensor,
                  out_factors: torch.Tensor,
                  alpha: Optional[torch.Tensor] = None,
                  gamma: Optional[torch.Tensor] = None,
                  beta: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Dense ``M`` (in x out) of one kernel from its factors (``(H, in, r/H)`` and ``(H, out, r/H)``)."""
    if kernel == 'linear':
        return in_factors[0] @ out_factors[0].T
    base = distance_kernel(in_factors, out_factors)
    if kernel == 'snell':
        return base
    if kernel == 'snella':
        # Mixed kernel: softmax over the output axis of each input row.
        return base + alpha * torch.softmax(base / gamma, dim=-1) + beta
    raise ValueError(f'unknown kernel {kernel!r}; choose one of {KERNELS}')


def zero_count(sparsity: float, numel: int) -> int:
    """How many entries a sparsity zeroes: the nearest whole number, so the kept fraction is within one entry."""
    return min(numel, max(0, int(round(float(sparsity) * numel))))


def selection_threshold(magnitude: torch.Tensor, sparsity: float) -> Optional[torch.Tensor]:
    """The largest magnitude that gets zeroed: an O(n) selection rather than a sort, so it works beyond
    ``torch.quantile``'s 2**24 limit. None when the sparsity zeroes nothing.

    On CUDA, ``kthvalue`` runs one thread block per slice, so a whole matrix is selected by one block
    (pytorch/pytorch#75599: 20x slower than a full sort); ``topk`` selects across the GPU, so it is used there.
    On the CPU, a sample narrows the selection to a band of the entries first.
    """
    n_zero = zero_count(sparsity, magnitude.numel())
    if not n_zero:
        return None
    flat = magnitude.flatten()
    if flat.is_cuda:
        return kth_smallest_by_topk(flat, n_zero)
    if flat.numel() >= MIN_SAMPLED_SELECTION:
        return kth_smallest_by_sample(flat, n_zero)
    return flat.kthvalue(n_zero).values


def kth_smallest_by_topk(values: torch.Tensor, k: int) -> torch.Tensor:
    """``values.kthvalue(k).values`` of a 1-d tensor through ``topk`` over whichever side is smaller: the k-th
    smallest is the largest of the k smallest, and the smallest of the n - k + 1 largest."""
    larger = values.numel() - k + 1
    if k <= larger:
        return values.topk(k, largest=False, sorted=False).values.max()
    return values.topk(larger, largest=True, sorted=False).values.min()


def kth_smallest_by_sample(values: torch.Tensor, k: int) -> torch.Tensor:
    """``values.kthvalue(k).values`` of a large 1-d tensor, 2-3x faster on a CPU: every SAMPLE_STRIDE-th
    entry brackets the k-th smallest in a band a few standard errors wide, one pass counts the entries below
    the band and gathers those inside it, and the selection runs over the band alone. Exact: if the band
    misses the k-th entry (a misleading sample), the whole tensor is selected over after all."""
    count = values.numel()
    sample = values[::SAMPLE_STRIDE]
    size = sample.numel()
    rank = k / count
    margin = 4 * math.sqrt(rank * (1 - rank) / size) + 2 / size
    low = sample.kthvalue(max(1, math.floor((rank - margin) * size))).values
    high = sample.kthvalue(min(size, math.ceil((rank + margin) * size))).values
    at_least_low = values >= low
    below = count - int(at_least_low.sum())
    band = values[at_least_low.logical_and_(values <= high)]
    if below < k <= below + band.numel():
        return band.kthvalue(k - below).values
    return values.kthvalue(k).values


def sparsify(matrix: torch.Tensor, sparsity: float, mask: str = 'magnitude',
             threshold: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Zero the ``sparsity`` fraction of entries with the smallest magnitude.

    ``magnitude`` (the authors' code) multiplies kept entries by their own detached magnitude, so larger
    updates get larger gradients; ``binary`` (the paper's words) keeps them as they are. A ``threshold`` computed
    earlier for the same matrix (the forward pass's, reused in backward) skips the selection.
    """
    if mask not in MASKS:
        raise ValueError(f'unknown mask {mask!r}; choose one of {MASKS}')
    magnitude = matrix.detach().abs()
    if threshold is None:
        threshold = selection_threshold(magnitude, sparsity)
    if threshold is None:
        return matrix * magnitude if mask == 'magnitude' else matrix
    keep = magnitude > threshold
    scale = magnitude * keep if mask == 'magnitude' else keep.to(matrix.dtype)
    return matrix * scale
