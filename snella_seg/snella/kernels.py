"""Kernel matrices and intra-layer sparsification of SNELLA (docs/method.md, sections 1 and 2).

Pure functions over tensors so that the math can be unit-tested against hand-computed cases, and the registry of
kernels (``KERNELS``): each is one ``Kernel`` entry that says all the layer needs to build, initialise and mask it.
Every kernel returns ``M`` with shape ``(in_features, out_features)``; the weight update is ``M.T``.
"""
import math
from dataclasses import dataclass, field
from typing import Callable, Dict, Mapping, Optional

import torch

MASKS = ('magnitude', 'binary')
# SNELL's fixed group coefficients c_h = 0.1 * (-1)**h for h = 0, 1: M = 0.1 * (d_0 - d_1).
DISTANCE_GROUPS = 2
DISTANCE_SCALE = 0.1
# Selection on the CPU: from this many entries on, a strided sample first narrows it to a band (a prime stride,
# so that the sample does not follow a matrix's rows or columns)
MIN_SAMPLED_SELECTION = 2 ** 16
SAMPLE_STRIDE = 61


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
    """
    name: str
    matrix: Callable[..., torch.Tensor]
    groups: int = 1
    scalars: Mapping[str, float] = field(default_factory=dict)
    zero_init_output: bool = False
    always_masked: bool = False
    bilinear: bool = False

    def __post_init__(self) -> None:
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
    """Make ``kernel`` available to ``SNELLALinear(kernel=kernel.name)`` and to configs; returns it."""
    if kernel.name in KERNELS and not replace:
        raise ValueError(f'a kernel named {kernel.name!r} is already registered; pick another name, or pass '
                         'replace=True to override it')
    KERNELS[kernel.name] = kernel
    return kernel


def get_kernel(name: str) -> Kernel:
    """The registered kernel of that name, or a ValueError that lists the registered ones."""
    try:
        return KERNELS[name]
    except (KeyError, TypeError):
        raise ValueError(f'unknown kernel {name!r}; choose one of {tuple(KERNELS)}, or register yours with '
                         'snella_seg.snella.kernels.register_kernel') from None


def distance_kernel(in_factors: torch.Tensor, out_factors: torch.Tensor) -> torch.Tensor:
    """SNELL's difference of Euclidean distances between input and output factors."""
    dist = torch.cdist(in_factors, out_factors, p=2)  # (H, in, out)
    # sum_h 0.1 * (-1)**h * d_h, as two reductions instead of a signed copy of every plane
    return DISTANCE_SCALE * (dist[0::2].sum(dim=0) - dist[1::2].sum(dim=0))


def lora_matrix(in_factors: torch.Tensor, out_factors: torch.Tensor) -> torch.Tensor:
    """LoRA's product ``A B^T``."""
    return in_factors[0] @ out_factors[0].T


def mixed_kernel(in_factors: torch.Tensor, out_factors: torch.Tensor, alpha: torch.Tensor, gamma: torch.Tensor,
                 beta: torch.Tensor) -> torch.Tensor:
    """SNELLA's mixed kernel: SNELL's distances plus a softmax over the output axis of each input row."""
    base = distance_kernel(in_factors, out_factors)
    return base + alpha * torch.softmax(base / gamma, dim=-1) + beta


register_kernel(Kernel('linear', lora_matrix, groups=1, zero_init_output=True, bilinear=True))
register_kernel(Kernel('snell', distance_kernel, groups=DISTANCE_GROUPS))
register_kernel(Kernel('snella', mixed_kernel, groups=DISTANCE_GROUPS,
                       scalars={'alpha': 1.0, 'gamma': 1.0, 'beta': 0.0}, always_masked=True))


def kernel_matrix(kernel: str, in_factors: torch.Tensor, out_factors: torch.Tensor,
                  *scalars: Optional[torch.Tensor]) -> torch.Tensor:
    """Dense ``M`` (in x out) of a registered kernel from its factors (``(H, in, r/H)`` and ``(H, out, r/H)``) and
    its scalars, in the kernel's order (``snella``: alpha, gamma, beta)."""
    return get_kernel(kernel).matrix(in_factors, out_factors, *scalars)


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
    if selects_by_topk(flat):
        return kth_smallest_by_topk(flat, n_zero)
    if flat.numel() >= MIN_SAMPLED_SELECTION:
        return kth_smallest_by_sample(flat, n_zero)
    return flat.kthvalue(n_zero).values


def selects_by_topk(values: torch.Tensor) -> bool:
    """Whether ``selection_threshold`` uses ``topk`` (CUDA) for these values: tests patch it to run the GPU's
    selection on the CPU."""
    return values.is_cuda


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
