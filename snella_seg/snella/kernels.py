"""Kernel matrices and intra-layer sparsification of SNELLA (docs/method.md, sections 1 and 2).

Pure functions over tensors so that the math can be unit-tested against hand-computed cases, and the registry of
kernels (``KERNELS``): each is one ``Kernel`` entry that says all the layer needs to build, initialise and mask it.
Every kernel returns ``M`` with shape ``(in_features, out_features)``; the weight update is ``M.T``.
"""
import contextlib
import math
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import torch

from .masks import Mask, get_mask
from .registry import add_entry, find_entry
# SNELL's fixed group coefficients c_h = 0.1 * (-1)**h for h = 0, 1: M = 0.1 * (d_0 - d_1).
DISTANCE_GROUPS = 2
DISTANCE_SCALE = 0.1
# Selection on the CPU: from this many entries on, a strided sample first narrows it to a band (a prime stride,
# so that the sample does not follow a matrix's rows or columns)
MIN_SAMPLED_SELECTION = 2 ** 16
SAMPLE_STRIDE = 61
# The backends whose float32 matrix products a process may switch to reduced precision (TF32 on CUDA, bf16 through
# oneDNN on the CPU): torch.set_float32_matmul_precision('high') and torch.backends.cuda.matmul.allow_tf32 set these
MATMUL_BACKENDS = (torch.backends.cuda.matmul, torch.backends.mkldnn.matmul)


@dataclass(frozen=True)
class Kernel:
    """Everything the layer needs to know about one kernel: adding a kernel is one ``register_kernel(Kernel(...))``.

    Args:
        name: What configs call it (``kernel='snella'``).
        matrix: ``matrix(in_factors, out_factors, *scalars) -> M`` with factors of shape ``(groups, in, rank/groups)``
            and ``(groups, out, rank/groups)``, the scalars in the order of ``scalars``, and ``M`` of shape
            ``(in, out)``; the weight update is ``M.T``. Runs in float32.
        groups: Factor groups H; the rank must be divisible by it.
        scalars: Extra learnable scalars and their initial values, e.g. ``{'alpha': 1.0}``; they become parameters
            of that name in every update (and state-dict keys), in this order; names the update itself uses
            (``in_factors``, ``sparsity``, ``mask`` ...) are refused when it is built.
        zero_init_output: Start the output factors at zero, so that ΔW = 0 at the start (LoRA); otherwise both
            factors get Kaiming-uniform initialisation.
        always_masked: Apply the mask even at sparsity 0 (SNELLA's magnitude mask still scales by |M| there);
            otherwise an update at sparsity 0 is the plain matrix.
        bilinear: ``M = in_factors[0] @ out_factors[0].T`` (one group, no scalars): unmasked, the layer computes
            ``(x A) B^T`` without ever building the dense M.
        fused: Optional faster implementation of ``matrix`` followed by the mask, with the signature of
            ``masked_kernel_matrix`` less its first argument and the same results; the built-in distance kernels have
            one (``masked_distance_kernel``), a registered kernel without it is masked by ``sparsify``.
    """
    name: str
    matrix: Callable[..., torch.Tensor]
    groups: int = 1
    scalars: Mapping[str, float] = field(default_factory=dict)
    zero_init_output: bool = False
    always_masked: bool = False
    bilinear: bool = False
    fused: Optional[Callable[..., Tuple[torch.Tensor, Optional[torch.Tensor]]]] = None

    def __post_init__(self) -> None:
        """Refuse entries the layer could not build.

        Raises:
            ValueError: If ``groups`` is not a positive integer, a scalar name is not an identifier, or a bilinear
                kernel has several groups or scalars.
        """
        if int(self.groups) != self.groups or self.groups < 1:
            raise ValueError(f'kernel {self.name!r}: groups must be a positive integer, got {self.groups}')
        not_names = [n for n in self.scalars if not n.isidentifier()]
        if not_names:
            raise ValueError(f'kernel {self.name!r}: scalar names {not_names} are not Python identifiers; rename them')
        if self.bilinear and (self.groups != 1 or self.scalars):
            raise ValueError(f'kernel {self.name!r}: a bilinear kernel (M = A B^T) has one group and no scalars')


# The registry: name -> Kernel. Add to it with register_kernel.
KERNELS: Dict[str, Kernel] = {}


def register_kernel(kernel: Kernel, replace: bool = False) -> Kernel:
    """Make ``kernel`` available to ``SNELLALinear(kernel=kernel.name)`` and to configs.

    Args:
        kernel: The entry to register.
        replace: Override an entry of the same name instead of refusing it.

    Returns:
        ``kernel``.

    Raises:
        ValueError: A kernel of that name is registered already and ``replace`` is False.
    """
    return add_entry(KERNELS, kernel, 'kernel', replace)


def get_kernel(name: str) -> Kernel:
    """The registered kernel of that name: the one place a kernel name is checked.

    Args:
        name: A registered kernel's name.

    Returns:
        Its ``Kernel`` entry.

    Raises:
        ValueError: No kernel of that name is registered; the message lists those that are.
    """
    return find_entry(KERNELS, name, 'kernel', 'snella_seg.snella.kernels.register_kernel')


def distance_kernel(in_factors: torch.Tensor, out_factors: torch.Tensor) -> torch.Tensor:
    """SNELL's difference of Euclidean distances between input and output factors.

    Args:
        in_factors: ``(H, in, r/H)``.
        out_factors: ``(H, out, r/H)``.

    Returns:
        ``M = 0.1 * sum_h (-1)**h d_h`` of shape ``(in, out)``, ``d_h`` the distances of group ``h``.
    """
    dist = torch.cdist(in_factors, out_factors, p=2)  # (H, in, out)
    # sum_h 0.1 * (-1)**h * d_h, as two reductions instead of a signed copy of every plane
    return DISTANCE_SCALE * (dist[0::2].sum(dim=0) - dist[1::2].sum(dim=0))


def lora_matrix(in_factors: torch.Tensor, out_factors: torch.Tensor) -> torch.Tensor:
    """LoRA's product ``A B^T``.

    Args:
        in_factors: ``(1, in, r/1)``.
        out_factors: ``(1, out, r/1)``.

    Returns:
        ``M`` of shape ``(in, out)``.
    """
    return in_factors[0] @ out_factors[0].T


def mixed_kernel(in_factors: torch.Tensor, out_factors: torch.Tensor, alpha: torch.Tensor, gamma: torch.Tensor,
                 beta: torch.Tensor) -> torch.Tensor:
    """SNELLA's mixed kernel: SNELL's distances plus a softmax over the output axis of each input row.

    Args:
        in_factors: ``(H, in, r/H)``.
        out_factors: ``(H, out, r/H)``.
        alpha: Weight of the softmax term.
        gamma: Its temperature.
        beta: A constant added to every entry.

    Returns:
        ``M = D + alpha * softmax(D / gamma) + beta`` of shape ``(in, out)``, ``D`` SNELL's distance kernel.
    """
    base = distance_kernel(in_factors, out_factors)
    return base + alpha * torch.softmax(base / gamma, dim=-1) + beta


def matmuls_at_full_precision() -> bool:
    """Whether float32 matrix products already run at full precision on every backend, read cheaply.

    Returns:
        True where torch reports 'highest': it does so only while no backend is set to a reduced precision (it raises
        where the per-backend settings disagree with it, which reads here as False).
    """
    try:
        return torch.get_float32_matmul_precision() == 'highest'
    except RuntimeError:
        return False


@contextlib.contextmanager
def full_precision_matmuls() -> Iterator[None]:
    """Run float32 matrix products at full precision inside, whatever the process set; restore its setting after.

    ``cdist`` computes distances through a matrix product that cancels: at TF32 its rounding moves entries across
    the selection threshold. Only flags on the host are read and written (no device sync), per backend, so the
    caller's setting comes back exactly; where nothing is reduced (the default), nothing is written.

    Yields:
        Nothing; the products inside run in IEEE float32.
    """
    if matmuls_at_full_precision():
        yield
        return
    previous = [backend.fp32_precision for backend in MATMUL_BACKENDS]
    for backend in MATMUL_BACKENDS:
        backend.fp32_precision = 'ieee'
    try:
        yield
    finally:
        for backend, precision in zip(MATMUL_BACKENDS, previous):
            backend.fp32_precision = precision


def kernel_matrix(kernel: str, in_factors: torch.Tensor, out_factors: torch.Tensor,
                  *scalars: Optional[torch.Tensor]) -> torch.Tensor:
    """Dense ``M`` of a registered kernel from its factors and scalars.

    Args:
        kernel: A registered kernel's name.
        in_factors: ``(H, in, r/H)``.
        out_factors: ``(H, out, r/H)``.
        *scalars: The kernel's scalars, in its order (``snella``: alpha, gamma, beta).

    Returns:
        ``M`` of shape ``(in, out)``.

    Raises:
        ValueError: ``kernel`` names no registered kernel.
    """
    return get_kernel(kernel).matrix(in_factors, out_factors, *scalars)


def zero_count(sparsity: float, numel: int) -> int:
    """How many entries a sparsity zeroes: the nearest whole number, so the kept fraction is within one entry.

    Args:
        sparsity: Fraction of entries to zero.
        numel: Entries of the matrix.

    Returns:
        The count, in [0, numel].
    """
    return min(numel, max(0, int(round(float(sparsity) * numel))))


def selection_threshold(magnitude: torch.Tensor, sparsity: float) -> Optional[torch.Tensor]:
    """The largest magnitude that gets zeroed.

    An O(n) selection rather than a sort, so it works beyond ``torch.quantile``'s 2**24 limit. On CUDA,
    ``kthvalue`` runs one thread block per slice, so a whole matrix is selected by one block, far slower than a full
    sort (pytorch/pytorch#75599); ``topk`` selects across the GPU, so it is used there. On the CPU, a sample
    narrows the selection to a band of the entries first.

    Args:
        magnitude: ``|M|``, detached.
        sparsity: Fraction of entries to zero.

    Returns:
        The k-th smallest magnitude with ``k = zero_count(sparsity, N)`` (0-dim); None when k is 0.
    """
    n_zero = zero_count(sparsity, magnitude.numel())
    if not n_zero:
        return None
    flat = magnitude.flatten()
    if not host_reads_are_free(flat):
        return kth_smallest_by_topk(flat, n_zero)
    if flat.numel() >= MIN_SAMPLED_SELECTION:
        return kth_smallest_by_sample(flat, n_zero)
    return flat.kthvalue(n_zero).values


def host_reads_are_free(values: torch.Tensor) -> bool:
    """Whether Python may read these values without stalling a device.

    On the CPU the selection and the gradient take shortcuts through host reads; elsewhere (CUDA) they run without
    any, the selection through ``topk``. Tests and the memory estimate patch it to False to run the device's path
    on the CPU.

    Args:
        values: Any tensor on the device in question.

    Returns:
        True on the CPU.
    """
    return values.device.type == 'cpu'


def kth_smallest_by_topk(values: torch.Tensor, k: int, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``values.kthvalue(k).values`` of a 1-d tensor through ``topk`` over whichever side is smaller.

    The k-th smallest is the largest of the k smallest, and the smallest of the n - k + 1 largest.

    Args:
        values: A 1-d tensor.
        k: The rank asked for, 1-based.
        out: A 0-dim tensor (a view into a larger one, say) to write the value into, instead of a new one.

    Returns:
        The k-th smallest value (0-dim): ``out`` where given.
    """
    larger = values.numel() - k + 1
    if k <= larger:
        side = values.topk(k, largest=False, sorted=False).values
        return side.max() if out is None else torch.amax(side, 0, out=out)
    side = values.topk(larger, largest=True, sorted=False).values
    return side.min() if out is None else torch.amin(side, 0, out=out)


def kth_smallest_by_sample(values: torch.Tensor, k: int) -> torch.Tensor:
    """``values.kthvalue(k).values`` of a large 1-d tensor, faster on a CPU by selecting over a band alone.

    Every SAMPLE_STRIDE-th entry brackets the k-th smallest in a band a few standard errors wide, one pass counts
    the entries below the band and gathers those inside it, and the selection runs over the band alone. Exact: if
    the band misses the k-th entry (a misleading sample), the whole tensor is selected over after all.

    Args:
        values: A 1-d tensor.
        k: The rank asked for, 1-based.

    Returns:
        The k-th smallest value (0-dim).
    """
    count = values.numel()
    sample = values[::SAMPLE_STRIDE]
    size = sample.numel()
    rank = k / count
    margin = 4 * math.sqrt(rank * (1 - rank) / size) + 2 / size
    low = sample.kthvalue(max(1, math.floor((rank - margin) * size))).values
    high = sample.kthvalue(min(size, math.ceil((rank + margin) * size))).values
    at_least_low = values >= low
    below = count - int(torch.count_nonzero(at_least_low))
    band = values[at_least_low.logical_and_(values <= high)]
    if below < k <= below + band.numel():
        return band.kthvalue(k - below).values
    return values.kthvalue(k).values


def sparsify(matrix: torch.Tensor, sparsity: float, mask: Union[str, Mask] = 'magnitude',
             threshold: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Zero the ``sparsity`` fraction of entries with the smallest magnitude and treat the kept ones as the mask says.

    Args:
        matrix: ``M``, under autograd or not.
        sparsity: Fraction of entries to zero, in [0, 1).
        mask: A registered mask's name or entry (``masks.MASKS``): ``'magnitude'`` (the authors' code) multiplies
            kept entries by their own detached magnitude, so larger updates get larger gradients; ``'binary'`` (the
            paper's words) keeps them as they are.
        threshold: One computed earlier for the same matrix (the forward pass's, reused in backward): skips the
            selection.

    Returns:
        The masked matrix.

    Raises:
        ValueError: ``mask`` names no registered mask.
    """
    spec = mask if isinstance(mask, Mask) else get_mask(mask)
    magnitude = matrix.detach().abs()
    if threshold is None:
        threshold = selection_threshold(magnitude, sparsity)
    return spec.apply(matrix, magnitude, threshold)


def masked_kernel_matrix(kernel: Kernel, factors: Sequence[torch.Tensor], sparsity: Optional[float], mask: Mask,
                         threshold: Optional[torch.Tensor] = None,
                         select: Callable[[torch.Tensor, float], Optional[torch.Tensor]] = selection_threshold
                         ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """``M`` of ``kernel`` from its factors and scalars, masked, and the selection threshold it used.

    Args:
        kernel: The kernel's registry entry.
        factors: Input factors, output factors and the kernel's scalars, in the order ``compute_delta`` takes them.
        sparsity: Fraction of entries to zero; None: unmasked.
        mask: The mask's registry entry.
        threshold: One from an earlier call with the same factors: skips the selection.
        select: ``select(magnitude, sparsity)`` chooses the threshold otherwise.

    Returns:
        The masked ``M`` (in x out) and the threshold (None where nothing was selected or zeroed).
    """
    if kernel.fused is not None:
        return kernel.fused(factors, sparsity, mask, threshold, select)
    matrix = kernel.matrix(*factors)
    if sparsity is None:
        return matrix, None
    if threshold is None:
        threshold = select(matrix.detach().abs(), sparsity)
    return sparsify(matrix, sparsity, mask, threshold), threshold


def _signed_plane_sum(planes: torch.Tensor) -> torch.Tensor:
    """Return ``planes[0::2].sum(0) - planes[1::2].sum(0)``; with two planes, the same values in one pass."""
    if planes.shape[0] == 2:
        return planes[0] - planes[1]
    return planes[0::2].sum(dim=0) - planes[1::2].sum(dim=0)


def _distance_kernel_forward(in_factors: torch.Tensor, out_factors: torch.Tensor, scalars: Sequence[torch.Tensor],
                             sparsity: Optional[float], mask: Mask, threshold: Optional[torch.Tensor], select,
                             for_backward: bool) -> Tuple[torch.Tensor, Optional[torch.Tensor], List]:
    """Return SNELL's (no scalars) or SNELLA's (alpha, gamma, beta) masked kernel, computed in place where it can be.

    The same operations as ``distance_kernel``/``mixed_kernel`` and ``sparsify`` (so the same values), but in place
    wherever the intermediate is not needed again: ΔW = M.T (a new contiguous tensor), the threshold and,
    ``for_backward``, what the gradient needs (the distance planes, the softmax, its input, the mask's scale; no
    scale for a straight-through mask).
    """
    planes = torch.cdist(in_factors, out_factors, p=2)  # (H, in, out)
    two_planes = planes.shape[0] == 2 and not for_backward
    base = planes[0].sub_(planes[1]) if two_planes else _signed_plane_sum(planes)
    base.mul_(DISTANCE_SCALE)
    spare = planes[1] if two_planes else None  # a free (in, out) buffer
    soft = logits = None
    if scalars:
        alpha, gamma, beta = scalars
        logits = torch.div(base, gamma, out=spare) if spare is not None else base / gamma
        soft = torch.softmax(logits, dim=-1)
        # base + alpha * soft + beta, in that order
        matrix = (soft * alpha if for_backward else soft.mul_(alpha)).add_(base).add_(beta)
        spare = base
    else:
        matrix = base
    scale = None
    if sparsity is not None:
        magnitude = torch.abs(matrix, out=spare) if spare is not None else matrix.abs()
        if threshold is None:
            threshold = select(magnitude, sparsity)
        scale = mask.scale(magnitude, threshold)
        if scale is not None:
            matrix = matrix.mul_(scale)
        if mask.straight_through:
            scale = None  # the gradient passes unscaled
    # returned as ΔW = M.T, contiguous: adding a transposed ΔW to W0 takes longer than this blocked copy
    delta = matrix.T.contiguous()
    return delta, threshold, ([planes, soft, logits, scale] if for_backward else [])


class _MaskedDistanceKernel(torch.autograd.Function):
    """SNELL's and SNELLA's masked kernel with a hand-written backward.

    Autograd of the composite would store and revisit a dozen dense (in x out) tensors; this backward visits each
    needed one about once. The gradient follows autograd's formulas in autograd's order (``cdist``'s, ``softmax``'s,
    the division's, the mask's): bitwise the same where cdist multiplies matrices (over 25 rows on either side), a
    few ulps apart on its direct path. Backward reuses the saved planes and logits as buffers, so a second backward
    through the same graph is refused by autograd.
    """

    @staticmethod
    def forward(ctx, selected: list, sparsity, mask, threshold, select, in_factors, out_factors, *scalars):
        delta, threshold, saved = _distance_kernel_forward(in_factors, out_factors, scalars, sparsity, mask,
                                                           threshold, select, for_backward=True)
        selected.append(threshold)
        planes, soft, logits, scale = saved
        ctx.has_scale, ctx.has_softmax = scale is not None, soft is not None
        ctx.save_for_backward(in_factors, out_factors, planes, *scalars,
                              *([soft, logits] if ctx.has_softmax else []), *([scale] if ctx.has_scale else []))
        return delta  # ΔW (out x in); masked_distance_kernel returns its transpose, M

    @staticmethod
    def backward(ctx, grad):
        with full_precision_matmuls():
            return _MaskedDistanceKernel.gradients(ctx, grad)

    @staticmethod
    def gradients(ctx, grad):
        """Return the gradients of ``forward``'s factors and scalars, from that of its ΔW."""
        in_factors, out_factors, planes, *rest = ctx.saved_tensors
        scale = rest.pop() if ctx.has_scale else None
        incoming = grad = grad.mT  # the gradient of M; autograd's: never written to
        if grad.stride(-1) != 1:  # elementwise work on a transposed layout is much slower
            grad = grad.contiguous()
        if scale is None:
            grad_base = grad.contiguous()
        else:  # in a buffer already held (grad * scale and scale * grad are the same numbers): one dense matrix less
            grad_base = scale.mul_(grad) if grad is incoming else grad.mul_(scale)
        grad_scalars = []
        if ctx.has_softmax:
            alpha, gamma, beta, soft, logits = rest
            grad_beta = grad_base.sum()
            grad_soft = grad_base * soft
            grad_alpha = grad_soft.sum()
            grad_logits = torch._softmax_backward_data(torch.mul(grad_base, alpha, out=grad_soft), soft, -1,
                                                       soft.dtype)
            del grad_soft  # one dense matrix less at the step's peak, the start of backward
            # d(base / gamma) / d gamma = -(base / gamma) / gamma
            grad_gamma = -logits.div_(gamma).mul_(grad_logits).sum()
            grad_base = grad_logits.div_(gamma).add_(grad_base)
            grad_scalars = [grad_alpha, grad_gamma, grad_beta]
        grad_even = grad_base.mul_(DISTANCE_SCALE) if grad_base is not incoming else grad_base * DISTANCE_SCALE
        # cdist's backward (torch's _euclidean_dist_backward): ratio = grad / distance, zero where the distance is
        zero = planes == 0 if _may_hold_zeros(planes) else None
        ratio = torch.div(grad_even, planes, out=planes)
        if zero is not None:
            ratio.masked_fill_(zero, 0)
        ratio[1::2].neg_()
        grad_in = in_factors * ratio.sum(-1, keepdim=True) - ratio @ out_factors
        grad_out = out_factors * ratio.sum(-2).unsqueeze(-1) - ratio.mT @ in_factors
        return (None, None, None, None, None, grad_in, grad_out, *grad_scalars)


def _may_hold_zeros(distances: torch.Tensor) -> bool:
    """Return whether the gradient must mask zero distances (coinciding factor rows).

    On the CPU one read of the smallest distance, a reduction cheaper than the mask's compare and fill, usually says
    no; on a device, where the read would stall the stream, the mask is always applied.
    """
    return not host_reads_are_free(distances) or bool(distances.amin() == 0)


def masked_distance_kernel(factors: Sequence[torch.Tensor], sparsity: Optional[float], mask: Mask,
                           threshold: Optional[torch.Tensor] = None,
                           select: Callable[[torch.Tensor, float], Optional[torch.Tensor]] = selection_threshold
                           ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """``masked_kernel_matrix`` for ``distance_kernel`` and ``mixed_kernel``: fewer dense temporaries and passes.

    On a GPU with Triton, for the built-in masks and float32 factors, the update is built by ``fused_kernels`` in a
    handful of launches (``SNELLA_FUSED_KERNELS=0`` keeps this eager path, the reference); ``select`` then is
    ``topk``'s.

    Args:
        factors: Input factors, output factors and the kernel's scalars (none for ``snell``).
        sparsity: Fraction of entries to zero; None: unmasked.
        mask: The mask's registry entry.
        threshold: One from an earlier call with the same factors: skips the selection.
        select: ``select(magnitude, sparsity)`` chooses the threshold otherwise.

    Returns:
        The same values as ``masked_kernel_matrix`` through ``matrix`` and ``sparsify``: the masked ``M`` (in x out)
        and the threshold.
    """
    # imported here: fused_kernels builds on this module
    from .fused_kernels import fused_kernels_take, fused_mask_name, fused_masked_distance_kernel
    fused_mask = fused_mask_name(mask)
    if fused_mask is not None and fused_kernels_take(factors):  # float32 (compute_delta casts to it) on the GPU
        return fused_masked_distance_kernel(factors, sparsity, fused_mask, threshold)
    in_factors, out_factors, *scalars = factors
    if torch.is_grad_enabled() and any(f.requires_grad for f in factors):
        selected: list = []
        delta = _MaskedDistanceKernel.apply(selected, sparsity, mask, threshold, select, *factors)
        return delta.T, selected[0]
    delta, threshold, _ = _distance_kernel_forward(in_factors, out_factors, scalars, sparsity, mask, threshold,
                                                   select, for_backward=False)
    return delta.T, threshold


register_kernel(Kernel('linear', lora_matrix, groups=1, zero_init_output=True, bilinear=True))
register_kernel(Kernel('snell', distance_kernel, groups=DISTANCE_GROUPS, fused=masked_distance_kernel))
register_kernel(Kernel('snella', mixed_kernel, groups=DISTANCE_GROUPS,
                       scalars={'alpha': 1.0, 'gamma': 1.0, 'beta': 0.0}, always_masked=True,
                       fused=masked_distance_kernel))
