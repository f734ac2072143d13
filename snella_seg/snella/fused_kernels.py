"""SNELL's and SNELLA's masked kernel in a few Triton launches, for GPUs (docs/method.md, sections 1 and 2).

On a GPU the eager ``kernels.masked_distance_kernel`` is launch-bound: about 130 operators per update and step.
``fused_masked_distance_kernel`` has its contract (the same arguments less ``select``, the same ΔW, threshold and
gradients) in these launches per update, counted as torch operators (views and empty allocations aside) plus
Triton launches (``_launch``) and checked by tests/snella/test_fused_kernels.py:

- forward with selection: 4 (|M| in one Triton kernel, ``topk`` and its ``max``/``min``, ΔW in one Triton kernel);
  without selection (sparsity None, zeroing nothing, or a threshold given): 1;
- backward rebuild (the forward with the forward's threshold): 1;
- backward: 8 for SNELLA, 7 for SNELL (one Triton kernel for the elementwise part, writing the ratio planes and
  per-program partial sums of the scalars' gradients; a row sum, a column sum, two products and two ``baddbmm``
  for the factors; one sum for the scalars).

So at most 13 per update and training step, selection included (the budget is 25). Nothing reads a device value
on the host.

Accuracy against eager (float32): ΔW agrees within rtol 1e-5, atol 1e-6, and the kept set is eager's except for
entries within that tolerance of the threshold; the gradients of every factor and scalar, float32 sums of cancelling
terms on either path, within rtol 1e-5 and an absolute 1e-5 of the gradient's largest entry. The distances are
computed from differences, free of the cancellation of ``torch.cdist``'s matrix-product path (beyond 25 rows).
Every kernel recomputes the distances, the softmax's row statistics and ``M`` from the factors with the same
helpers, so the forward and a rebuild with its threshold select the same entries and return bitwise-equal ΔW.

The path is meant for CUDA tensors when triton imports (``fused_kernels_available``); ``fused_kernels_forced``
runs it on CPU tensors, in Triton's interpreter (``TRITON_INTERPRET=1`` set before the kernels are first used);
``SNELLA_FUSED_KERNELS=0`` in the environment turns it off, leaving the eager reference. This module imports
without triton: the kernels are imported at their first launch.
"""
import contextlib
import functools
import os
from types import ModuleType
from typing import Iterator, List, Optional, Sequence, Tuple

import torch
from torch._subclasses.fake_tensor import is_fake
from torch.autograd.function import once_differentiable

from .kernels import DISTANCE_SCALE, kth_smallest_by_topk, zero_count
from .masks import Mask, binary_scale, magnitude_scale

SWITCH = 'SNELLA_FUSED_KERNELS'
# The mask scales the kernels compute themselves, by the name the kernels know them by
FUSED_SCALES = {magnitude_scale: 'magnitude', binary_scale: 'binary'}
# Rows of M per program (small, so that even 768 input features make about 100 programs, most of an H100's SMs),
# and the tile width along the output axis; not yet tuned on a GPU
BLOCK_I = 8
BLOCK_J = 128
_forced_depth = 0
_fused_allowed = True  # use_fused's choice


@functools.lru_cache(maxsize=None)
def _triton_kernels() -> Optional[ModuleType]:
    """Return the Triton kernels' module, or None where triton does not import."""
    try:
        from snella_seg.snella import _triton_kernels
    except ImportError:
        return None
    return _triton_kernels


def fused_kernels_available(tensor: torch.Tensor) -> bool:
    """Whether ``fused_masked_distance_kernel`` should build the update of factors like ``tensor``.

    Args:
        tensor: A factor of the update.

    Returns:
        True on CUDA (or anywhere inside ``fused_kernels_forced``) when triton imports, unless the environment sets
        ``SNELLA_FUSED_KERNELS=0`` or ``use_fused(False)`` is active.
    """
    if os.environ.get(SWITCH, '1') == '0' or not _fused_allowed:
        return False
    if not (tensor.is_cuda or _forced_depth) or is_fake(tensor):  # fake tensors (memory estimate): eager
        return False
    return _triton_kernels() is not None


def fused_mask_name(mask: Mask) -> Optional[str]:
    """Return the kernels' name of a mask they compute themselves, or None (eager then masks it)."""
    return None if mask.straight_through else FUSED_SCALES.get(mask.scale)


@contextlib.contextmanager
def fused_kernels_forced() -> Iterator[None]:
    """Make ``fused_kernels_available`` say yes for CPU tensors too (tests).

    Triton runs CPU tensors only in its interpreter, so set ``TRITON_INTERPRET=1`` before the kernels are first used.
    """
    global _forced_depth
    _forced_depth += 1
    try:
        yield
    finally:
        _forced_depth -= 1


@contextlib.contextmanager
def use_fused(enabled: bool) -> Iterator[None]:
    """Build ΔW on the eager path (``enabled=False``) or where the fused path is available (``True``) inside.

    The GPU check compares the two paths in one process; ``SNELLA_FUSED_KERNELS=0`` does the same for a whole run.

    Args:
        enabled: Whether the fused path may be used.

    Yields:
        None: inside the ``with`` block the choice holds; the enclosing one is restored after it.
    """
    global _fused_allowed
    enclosing, _fused_allowed = _fused_allowed, enabled
    try:
        yield
    finally:
        _fused_allowed = enclosing


def _launch(kernel, grid: Tuple[int, ...], *args, **meta) -> None:
    """Every Triton launch of this module goes through here, so that a test can count them."""
    kernel[grid](*args, **meta)


def _mask_flags(sparsity: Optional[float], mask: str, threshold: Optional[torch.Tensor]) -> dict:
    """Return the kernels' compile-time switches of a mask: scale by |M|, and compare with a threshold.

    Unmasked: neither, whatever threshold comes, as eager.
    """
    masked = sparsity is not None
    return {'MAGNITUDE': masked and mask == 'magnitude', 'THRESHOLD': masked and threshold is not None}


def _kernel_args(in_factors: torch.Tensor, out_factors: torch.Tensor, scalars: Sequence[torch.Tensor],
                 threshold: Optional[torch.Tensor]) -> Tuple[list, dict]:
    """Return the arguments every kernel starts with, and the compile-time ones of the kernel's shape.

    The first are the factors, the scalars and the threshold; a factor stands in for those absent.
    """
    groups, _, rank = in_factors.shape
    placeholder = in_factors
    args = [in_factors.contiguous(), out_factors.contiguous(), *(scalars or [placeholder] * 3),
            placeholder if threshold is None else threshold]
    meta = {'GROUPS': groups, 'RANK': rank, 'SCALE': DISTANCE_SCALE, 'SOFTMAX': bool(scalars),
            'BLOCK_I': BLOCK_I, 'BLOCK_J': BLOCK_J}
    return args, meta


def _grid(n_in: int) -> Tuple[int]:
    return (-(-n_in // BLOCK_I),)


def _build(in_factors: torch.Tensor, out_factors: torch.Tensor, scalars: Sequence[torch.Tensor],
           sparsity: Optional[float], mask: str, threshold: Optional[torch.Tensor]
           ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Return ΔW (out x in, contiguous) and the threshold.

    The selection runs over |M| (one kernel, then ``topk``) unless a threshold is given or nothing is zeroed; then
    one kernel builds ΔW.
    """
    kernels = _triton_kernels()
    n_in, n_out = in_factors.shape[1], out_factors.shape[1]
    grid = _grid(n_in)
    if sparsity is not None and threshold is None:
        n_zero = zero_count(sparsity, n_in * n_out)
        if n_zero:
            magnitude = in_factors.new_empty(n_in * n_out)
            args, meta = _kernel_args(in_factors, out_factors, scalars, None)
            _launch(kernels.build_kernel, grid, *args, magnitude, n_in, n_out, **meta,
                    **_mask_flags(sparsity, mask, None), WRITE_DELTA=False)
            threshold = kth_smallest_by_topk(magnitude, n_zero)
    delta = in_factors.new_empty(n_out, n_in)
    args, meta = _kernel_args(in_factors, out_factors, scalars, threshold)
    _launch(kernels.build_kernel, grid, *args, delta, n_in, n_out, **meta, **_mask_flags(sparsity, mask, threshold),
            WRITE_DELTA=True)
    return delta, threshold


class _FusedMaskedDistanceKernel(torch.autograd.Function):
    """The masked kernel with its backward in one Triton kernel and a few products.

    Saves only the factors, the scalars and the threshold; backward recomputes the rest.
    """

    @staticmethod
    def forward(ctx, selected: list, sparsity, mask, threshold, in_factors, out_factors, *scalars):
        delta, threshold = _build(in_factors, out_factors, scalars, sparsity, mask, threshold)
        selected.append(threshold)
        ctx.flags = _mask_flags(sparsity, mask, threshold)
        ctx.save_for_backward(in_factors, out_factors, *scalars, *([threshold] if ctx.flags['THRESHOLD'] else []))
        return delta  # ΔW (out x in); fused_masked_distance_kernel returns its transpose, M

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_delta):
        in_factors, out_factors, *rest = ctx.saved_tensors
        threshold = rest.pop() if ctx.flags['THRESHOLD'] else None
        scalars = rest
        grad = grad_delta.mT  # dL/dM, read through its strides
        n_in, n_out = grad.shape
        grid = _grid(n_in)
        ratio = in_factors.new_empty(in_factors.shape[0], n_in, n_out)
        partials = in_factors.new_empty(3, grid[0]) if scalars else in_factors
        args, meta = _kernel_args(in_factors, out_factors, scalars, threshold)
        _launch(_triton_kernels().grad_kernel, grid, *args, grad, grad.stride(0), grad.stride(1), ratio, partials,
                n_in, n_out, **meta, **ctx.flags)
        # cdist's backward, as torch writes it: A * rowsum(ratio) - ratio @ B, and the same for B over columns
        grad_in = torch.baddbmm(in_factors * ratio.sum(-1, keepdim=True), ratio, out_factors, alpha=-1)
        grad_out = torch.baddbmm(out_factors * ratio.sum(-2).unsqueeze(-1), ratio.mT, in_factors, alpha=-1)
        grad_scalars: List[torch.Tensor] = list(partials.sum(1).unbind()) if scalars else []
        return (None, None, None, None, grad_in, grad_out, *grad_scalars)


def fused_masked_distance_kernel(factors: Sequence[torch.Tensor], sparsity: Optional[float], mask: str,
                                 threshold: Optional[torch.Tensor] = None
                                 ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """``kernels.masked_distance_kernel`` in a handful of Triton launches (the module docstring counts them).

    Args:
        factors: ``[in_factors (H, in, r/H), out_factors (H, out, r/H), *scalars]``, float32 on one device; scalars
            are none for ``snell`` and the 0-d ``alpha, gamma, beta`` for ``snella``.
        sparsity: The share of entries to zero; None builds the unmasked matrix.
        mask: ``'magnitude'`` (kept entries scaled by their detached magnitude, at sparsity 0 too) or ``'binary'``.
        threshold: The threshold an earlier call with the same factors returned (a backward rebuild): skips the
            selection, so the same entries are kept.

    Returns:
        ``M`` (in x out; its ``.T``, ΔW, is contiguous), differentiable in every factor and scalar, and the threshold
        used (a 0-d tensor on the factors' device), or None when nothing is zeroed.

    Raises:
        ValueError: On an unknown mask.
    """
    if mask not in FUSED_SCALES.values():
        raise ValueError(f'the fused kernels compute the masks {tuple(FUSED_SCALES.values())}, not {mask!r}')
    in_factors, out_factors, *scalars = factors
    if torch.is_grad_enabled() and any(f.requires_grad for f in factors):
        selected: list = []
        delta = _FusedMaskedDistanceKernel.apply(selected, sparsity, mask, threshold, *factors)
        return delta.T, selected[0]
    delta, threshold = _build(in_factors, out_factors, scalars, sparsity, mask, threshold)
    return delta.T, threshold
