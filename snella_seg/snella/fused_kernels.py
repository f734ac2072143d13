"""SNELL's and SNELLA's masked kernel in a few Triton launches, for GPUs (docs/method.md, sections 1 and 2).

On a GPU the eager ``kernels.masked_distance_kernel`` is launch-bound: about 130 operators per update and step.
``fused_masked_distance_kernel`` has its contract (the same arguments less ``select``, the same ΔW, threshold and
gradients) in these launches per update, counted as torch operators (views and empty allocations aside) plus
Triton launches (``_launch``) and checked by tests/snella/test_fused_kernels.py:

- forward with selection: 4 (|M| in one Triton kernel, ``topk`` and its maximum or minimum, ΔW in one Triton
  kernel); without selection (sparsity None, zeroing nothing, or a threshold given): 1;
- backward rebuild (the forward with the forward's threshold): 1;
- backward: 2 for SNELLA and SNELL (``grad_kernel``: the ratio planes, the input factors' gradients and per-program
  partial sums of the scalars' gradients; ``column_grad_kernel``: the output factors' gradients and the scalars').

So at most 7 per update and training step, selection included (the budget is 25). Nothing reads a device value on
the host.

SNELLA's layer (``layer._FusedDeltaLinear``) calls ``fused_layer_weight`` and ``fused_layer_factor_grads`` itself:
the build kernel writes ``W0 + ΔW`` (no separate add), backward hands X^T G to the gradient kernels (no autograd
graph of ΔW), and the q, k and v updates of one projection share each launch (the grid's second axis) but the
selection. A layer's training step: 10 launches with one update, 17 with three (the linear, X^T G and the input's
gradient included).

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
from typing import Iterator, List, NamedTuple, Optional, Sequence, Tuple

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
# column_grad_kernel's columns per program and rows per step, and the partial sums it adds at a time
COLUMN_BLOCK_J = 32
COLUMN_BLOCK_I = 32
PARTIALS_BLOCK = 128
_forced_depth = 0
_PLAIN_TENSOR_TYPES = (torch.Tensor, torch.nn.Parameter)
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
    if not (tensor.is_cuda or _forced_depth) or _maybe_fake(tensor):  # fake tensors (memory estimate): eager
        return False
    return _triton_kernels() is not None


def fused_kernels_take(factors: Sequence[torch.Tensor]) -> bool:
    """Whether the fused kernels build the update of these factors.

    They must be float32 (all the kernels read), and ``fused_kernels_available`` must say yes.

    Args:
        factors: The update's factors (and scalars), or a whole layer's.

    Returns:
        True where the fused path builds it; other dtypes stay on the eager path.
    """
    return all(f.dtype == torch.float32 for f in factors) and fused_kernels_available(factors[0])


def _maybe_fake(tensor: torch.Tensor) -> bool:
    """Return ``is_fake(tensor)``, answered fast for plain tensors and parameters.

    It is asked once per adapted layer and step, where ``is_fake``'s Python checks alone cost a microsecond or two.
    """
    if type(tensor) in _PLAIN_TENSOR_TYPES and not torch._is_functional_tensor(tensor):
        return torch._C._functorch.is_functorch_wrapped_tensor(tensor) and is_fake(tensor)
    return is_fake(tensor)


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
    """Every Triton launch of this module goes through here, so that a test can count them.

    Triton launches on the current CUDA device, not on its arguments': the first argument's device (a factor's) is
    made current for the launch where it is not already (a model on cuda:1 while cuda:0 is current).
    """
    device = args[0].device
    if device.type == 'cuda' and device.index != torch.cuda.current_device():
        with torch.cuda.device(device.index):
            kernel[grid](*args, **meta)
        return
    kernel[grid](*args, **meta)


def _mask_flags(sparsity: Optional[float], mask: str, threshold: Optional[torch.Tensor]) -> dict:
    """Return the kernels' compile-time switches of a mask: scale by |M|, and compare with a threshold.

    Unmasked: neither, whatever threshold comes, as eager.
    """
    masked = sparsity is not None
    return {'MAGNITUDE': masked and mask == 'magnitude', 'THRESHOLD': masked and threshold is not None}


class FactorBatch(NamedTuple):
    """The factors of one or more updates of one shape, laid out as the kernels read them.

    ``in_factors`` holds (updates, H, in, r/H) values and ``out_factors`` (updates, H, out, r/H), contiguous, in
    whatever shape they came (a single update's own 3-d factors need no reshape: the kernels read raw memory);
    ``scalars`` are SNELLA's alpha, gamma and beta (the tensors the kernels read the first update's from),
    ``scalar_stride`` entries apart from one update to the next; empty for SNELL. The sizes ride along, so the
    host reads no tensor shape per launch.
    """

    in_factors: torch.Tensor
    out_factors: torch.Tensor
    scalars: Tuple[torch.Tensor, ...]
    scalar_stride: int
    updates: int
    groups: int
    n_in: int
    n_out: int
    rank: int


def factor_batch(factor_lists: Sequence[Sequence[torch.Tensor]]) -> FactorBatch:
    """Lay out the factors of updates of one shape for the kernels, without a copy for a single update.

    Several updates (q, k and v of a projection) are stacked: one ``stack`` per kind of factor. The tensors are
    read by the kernels only, never by autograd, so they are not detached (one host call less per factor).

    Args:
        factor_lists: Each update's ``[in_factors (H, in, r/H), out_factors (H, out, r/H), *scalars]``, float32.

    Returns:
        The batch.
    """
    groups, n_in, rank = factor_lists[0][0].shape
    n_out = factor_lists[0][1].shape[1]
    if len(factor_lists) == 1:
        in_factors, out_factors, *scalars = [f.contiguous() for f in factor_lists[0]]
        return FactorBatch(in_factors, out_factors, tuple(scalars), 0, 1, groups, n_in, n_out, rank)
    with torch.no_grad():
        in_factors = torch.stack([f[0] for f in factor_lists])
        out_factors = torch.stack([f[1] for f in factor_lists])
        scalars: Tuple[torch.Tensor, ...] = ()
        if len(factor_lists[0]) > 2:
            stacked = torch.stack([s for f in factor_lists for s in f[2:]]).view(len(factor_lists), -1)
            scalars = tuple(stacked.unbind(1))
    return FactorBatch(in_factors, out_factors, scalars, len(factor_lists[0]) - 2, len(factor_lists), groups, n_in,
                       n_out, rank)


def _kernel_args(batch: FactorBatch, threshold: Optional[torch.Tensor]) -> Tuple[list, dict]:
    """Return the arguments every row-wise kernel starts with, and the compile-time ones of the batch's shape.

    The first are the factors, the scalars and their stride, and the thresholds (one per update); a factor stands in
    for those absent.
    """
    placeholder = batch.in_factors
    args = [batch.in_factors, batch.out_factors, *(batch.scalars or [placeholder] * 3), batch.scalar_stride,
            placeholder if threshold is None else threshold]
    meta = {'GROUPS': batch.groups, 'RANK': batch.rank, 'SCALE': DISTANCE_SCALE, 'SOFTMAX': bool(batch.scalars),
            'BLOCK_I': BLOCK_I, 'BLOCK_J': BLOCK_J}
    return args, meta


def _grid(n_in: int, updates: int = 1) -> Tuple[int, int]:
    return (-(-n_in // BLOCK_I), updates)


def _select(batch: FactorBatch, sparsities: Sequence[Optional[float]], mask: str
            ) -> Tuple[Optional[torch.Tensor], List[Optional[torch.Tensor]]]:
    """Return every update's threshold in one tensor (None where none selects), and each update's own (or None).

    One kernel writes |M| of every update, then ``topk`` selects per update into its entry of the thresholds (a
    single update's 0-d threshold stands for them). An update that zeroes nothing beside one that does gets -1, below
    every magnitude: it keeps every entry.
    """
    n_in, n_out = batch.n_in, batch.n_out
    counts = [0 if s is None else zero_count(s, n_in * n_out) for s in sparsities]
    if not any(counts):
        return None, [None] * len(counts)
    magnitude = batch.in_factors.new_empty(batch.updates, n_in * n_out)
    args, meta = _kernel_args(batch, None)
    _launch(_triton_kernels().build_kernel, _grid(n_in, batch.updates), *args, magnitude, magnitude, n_in, n_out,
            **meta, **_mask_flags(sparsities[0], mask, None), WRITE_DELTA=False, HAS_BASE=False)
    if batch.updates == 1:  # the threshold itself stands for the thresholds (fewer host-side calls)
        threshold = kth_smallest_by_topk(magnitude.view(-1), counts[0])
        return threshold, [threshold]
    thresholds = magnitude.new_empty(batch.updates)
    own: List[Optional[torch.Tensor]] = []
    for update, n_zero in enumerate(counts):
        if n_zero:
            own.append(kth_smallest_by_topk(magnitude[update], n_zero, out=thresholds[update]))
        else:
            thresholds[update].fill_(-1.0)
            own.append(None)
    return thresholds, own


def _build(batch: FactorBatch, sparsities: Sequence[Optional[float]], mask: str, thresholds: Optional[torch.Tensor],
           base: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Return ΔW of every update stacked along the rows (updates * out x in, contiguous), plus ``base`` if given.

    One kernel launch, with the thresholds given (one per update, or None: nothing is zeroed).
    """
    n_in, n_out = batch.n_in, batch.n_out
    delta = batch.in_factors.new_empty(batch.updates * n_out, n_in)
    args, meta = _kernel_args(batch, thresholds)
    _launch(_triton_kernels().build_kernel, _grid(n_in, batch.updates), *args, delta if base is None else base, delta,
            n_in, n_out, **meta, **_mask_flags(sparsities[0], mask, thresholds), WRITE_DELTA=True,
            HAS_BASE=base is not None)
    return delta


def _factor_grads(batch: FactorBatch, sparsities: Sequence[Optional[float]], mask: str,
                  thresholds: Optional[torch.Tensor], grad: torch.Tensor) -> List[torch.Tensor]:
    """Return the gradients of every update's factors (``factor_batch``'s order, update after update).

    Two kernel launches for all updates: ``grad_kernel`` (the ratio planes, the input factors' gradients and the
    scalars' partial sums) and ``column_grad_kernel`` (the output factors' gradients and the scalars' sums). ``grad``
    is dL/dM of all updates side by side (in x updates * out), any strides: the transpose of dL/dΔW.
    """
    updates, groups, n_in, n_out, rank = batch.updates, batch.groups, batch.n_in, batch.n_out, batch.rank
    grid = _grid(n_in, updates)
    width = triton_next_power_of_2(groups * rank)
    ratio = grad.new_empty(updates, groups, n_in, n_out)
    single = updates == 1
    grad_in = grad.new_empty(batch.in_factors.shape)  # a single update's factors have their own shape
    grad_out = grad.new_empty(batch.out_factors.shape)
    partials = grad.new_empty(updates, 3, grid[0]) if batch.scalars else grad_in
    grad_scalars = grad.new_empty(3 if single else (updates, 3)) if batch.scalars else grad_in
    args, meta = _kernel_args(batch, thresholds)
    kernels = _triton_kernels()
    _launch(kernels.grad_kernel, grid, *args, grad, grad.stride(0), grad.stride(1), ratio, grad_in, partials, n_in,
            n_out, **meta, **_mask_flags(sparsities[0], mask, thresholds), WIDTH=width)
    _launch(kernels.column_grad_kernel, (-(-n_out // COLUMN_BLOCK_J), updates), batch.in_factors, batch.out_factors,
            ratio, grad_out, partials, grad_scalars, n_in, n_out, grid[0], GROUPS=groups, RANK=rank,
            SOFTMAX=bool(batch.scalars), BLOCK_I=COLUMN_BLOCK_I, BLOCK_J=COLUMN_BLOCK_J, WIDTH=width,
            BLOCK_P=PARTIALS_BLOCK)
    if single:
        return [grad_in, grad_out, *(grad_scalars.unbind() if batch.scalars else ())]
    grads: List[torch.Tensor] = []
    for update in range(updates):
        grads += [grad_in[update], grad_out[update], *(grad_scalars[update].unbind() if batch.scalars else ())]
    return grads


def triton_next_power_of_2(n: int) -> int:
    """Return the smallest power of two at least ``n`` (Triton's block shapes are powers of two)."""
    return 1 << max(0, n - 1).bit_length()


def fused_layer_weight(batch: FactorBatch, sparsities: Sequence[Optional[float]], mask: str,
                       base: Optional[torch.Tensor] = None, thresholds: Optional[torch.Tensor] = None,
                       reselect: bool = True
                       ) -> Tuple[torch.Tensor, Optional[torch.Tensor], List[Optional[torch.Tensor]]]:
    """The weight of a layer whose updates (one, or q, k and v) run on the fused path: ``base + ΔW`` in one kernel.

    Args:
        batch: The updates' factors (``factor_batch``), one shape for all.
        sparsities: Each update's sparsity, all None (unmasked) or none None.
        mask: ``'magnitude'`` or ``'binary'``, one for all updates.
        base: W0 (out x in, float32 contiguous) to add; None returns ΔW alone.
        thresholds: An earlier call's first return (a backward rebuild): the same entries are kept.
        reselect: Select anew when ``thresholds`` is None (False: keep every entry, as the rebuild of a forward that
            zeroed nothing).

    Returns:
        ``base + ΔW`` (updates * out x in, contiguous, no autograd), every update's threshold in one tensor (None
        where none was selected), and each update's own threshold (a 0-d view of it, or None).
    """
    own: List[Optional[torch.Tensor]] = [None] * batch.updates
    if thresholds is None and reselect:
        thresholds, own = _select(batch, sparsities, mask)
    return _build(batch, sparsities, mask, thresholds, base), thresholds, own


def fused_layer_factor_grads(batch: FactorBatch, sparsities: Sequence[Optional[float]], mask: str,
                             thresholds: Optional[torch.Tensor], grad_matrix: torch.Tensor) -> List[torch.Tensor]:
    """The gradients of every update's factors from the gradient of the layer's weight, in two kernel launches.

    Args:
        batch: As given to ``fused_layer_weight``.
        sparsities: As given to ``fused_layer_weight``.
        mask: As given to ``fused_layer_weight``.
        thresholds: The thresholds ``fused_layer_weight`` returned.
        grad_matrix: dL/dM, the transpose of dL/d(W0 + ΔW): in x updates * out, any strides (X^T G as a matrix
            product gives it contiguous, the layout the kernels read fastest).

    Returns:
        The gradients in the order of each update's ``factor_parameters``, update after update.
    """
    return _factor_grads(batch, sparsities, mask, thresholds, grad_matrix.float())


def _single_update_delta(factors: Sequence[torch.Tensor], sparsity: Optional[float], mask: str,
                         threshold: Optional[torch.Tensor]
                         ) -> Tuple[torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]:
    """Return one update's ΔW (out x in), its thresholds as the gradient kernels take them, and the threshold used.

    The threshold used is ``threshold`` where given (no selection), else the 0-d one selected (None where nothing is
    zeroed).
    """
    given = None if threshold is None else threshold.reshape(1)
    delta, thresholds, own = fused_layer_weight(factor_batch([factors]), [sparsity], mask, thresholds=given)
    return delta, thresholds, threshold if given is not None else own[0]


class _FusedMaskedDistanceKernel(torch.autograd.Function):
    """The masked kernel with its backward in two Triton kernels.

    Saves only the factors, the scalars and the threshold; backward recomputes the rest.
    """

    @staticmethod
    def forward(ctx, selected: list, sparsity, mask, threshold, in_factors, out_factors, *scalars):
        delta, thresholds, threshold = _single_update_delta([in_factors, out_factors, *scalars], sparsity, mask,
                                                            threshold)
        selected.append(threshold)
        ctx.sparsity, ctx.mask = sparsity, mask
        ctx.save_for_backward(in_factors, out_factors, *scalars, *([] if thresholds is None else [thresholds]))
        ctx.has_threshold = thresholds is not None
        return delta  # ΔW (out x in); fused_masked_distance_kernel returns its transpose, M

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_delta):
        in_factors, out_factors, *rest = ctx.saved_tensors
        thresholds = rest.pop() if ctx.has_threshold else None
        batch = factor_batch([[in_factors, out_factors, *rest]])
        grads = fused_layer_factor_grads(batch, [ctx.sparsity], ctx.mask, thresholds, grad_delta.mT)
        return (None, None, None, None, *grads)


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
    if torch.is_grad_enabled() and any(f.requires_grad for f in factors):
        selected: list = []
        delta = _FusedMaskedDistanceKernel.apply(selected, sparsity, mask, threshold, *factors)
        return delta.T, selected[0]
    delta, _, threshold = _single_update_delta(factors, sparsity, mask, threshold)
    return delta.T, threshold
