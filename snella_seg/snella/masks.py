"""The registry of masks (``MASKS``): how the entries an update keeps are treated (docs/method.md, section 2).

Each mask is one ``Mask`` entry, used alike by ``kernels.sparsify`` (any kernel, under autograd) and by the fused
distance kernels (``kernels.masked_distance_kernel``, with a hand-written backward). Which entries are kept is the
same for every mask: those whose magnitude exceeds the selection threshold ``t`` (``kernels.selection_threshold``).
"""
from dataclasses import dataclass
from typing import Callable, Dict, Optional

import torch

from .registry import add_entry, find_entry

MaskScale = Callable[[torch.Tensor, Optional[torch.Tensor]], Optional[torch.Tensor]]


@dataclass(frozen=True)
class Mask:
    """How a mask treats the entries of a kernel matrix ``M``: adding a mask is one ``register_mask(Mask(...))``.

    The masked matrix is ``M * scale``, with ``scale`` computed from the detached magnitude, so the gradient of ``M``
    is the incoming one times ``scale`` (or, ``straight_through``, the incoming one unchanged).

    Args:
        name: What configs call it (``mask='magnitude'``).
        scale: ``scale(magnitude, threshold) -> factor`` of every entry of ``M``, or None to leave ``M`` as it is.
            ``magnitude`` is the detached ``|M|``, a buffer the function may overwrite (it is not read again);
            ``threshold`` is the largest zeroed magnitude, or None when the sparsity zeroes nothing. The factor must
            be zero where ``magnitude <= threshold``; kept entries are scaled by their magnitude (``magnitude``) or
            by 1 (``binary``).
        straight_through: Backward passes the gradient of the masked matrix to ``M`` unchanged, as if unmasked.
        reuse_threshold: The fused layer's backward rebuilds ΔW with the forward pass's threshold (same factors, so
            the same kept entries) instead of selecting again.
    """
    name: str
    scale: MaskScale
    straight_through: bool = False
    reuse_threshold: bool = True

    def apply(self, matrix: torch.Tensor, magnitude: torch.Tensor, threshold: Optional[torch.Tensor]) -> torch.Tensor:
        """The masked ``matrix`` under autograd.

        Args:
            matrix: ``M``, of any shape.
            magnitude: ``matrix.detach().abs()``, a buffer ``scale`` may overwrite.
            threshold: The largest zeroed magnitude; None when nothing is zeroed.

        Returns:
            ``M * scale``; ``M`` itself where the mask leaves it as it is.
        """
        scale = self.scale(magnitude, threshold)
        if scale is None:
            return matrix
        if self.straight_through:
            return _ScaledStraightThrough.apply(matrix, scale)
        return matrix * scale


class _ScaledStraightThrough(torch.autograd.Function):
    """``matrix * scale`` whose gradient is the incoming one, unscaled."""

    @staticmethod
    def forward(ctx, matrix, scale):
        return matrix * scale

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def kept(magnitude: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """The entries a mask keeps (bool): those whose magnitude exceeds the largest zeroed one.

    Args:
        magnitude: ``|M|``, detached.
        threshold: The largest zeroed magnitude.

    Returns:
        A bool tensor of ``magnitude``'s shape.
    """
    return magnitude > threshold


def magnitude_scale(magnitude: torch.Tensor, threshold: Optional[torch.Tensor]) -> torch.Tensor:
    """The authors' mask: kept entries times their own detached magnitude, so larger entries get larger gradients.

    With nothing zeroed, every entry still is.

    Args:
        magnitude: ``|M|``, detached; overwritten.
        threshold: The largest zeroed magnitude, or None.

    Returns:
        ``|M| * [|M| > t]`` (``|M|`` when nothing is zeroed), in ``magnitude``'s buffer.
    """
    return magnitude if threshold is None else magnitude.mul_(kept(magnitude, threshold))


def binary_scale(magnitude: torch.Tensor, threshold: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """The paper's mask: kept entries as they are.

    Args:
        magnitude: ``|M|``, detached.
        threshold: The largest zeroed magnitude, or None.

    Returns:
        ``[|M| > t]`` in ``magnitude``'s dtype; None (``M`` unchanged) when nothing is zeroed.
    """
    return None if threshold is None else kept(magnitude, threshold).to(magnitude.dtype)


# The registry: name -> Mask. Add to it with register_mask.
MASKS: Dict[str, Mask] = {}


def register_mask(mask: Mask, replace: bool = False) -> Mask:
    """Make ``mask`` available to ``SNELLAConfig(mask=mask.name)``, ``SNELLALinear`` and ``sparsify``.

    Args:
        mask: The entry to register.
        replace: Override an entry of the same name instead of refusing it.

    Returns:
        ``mask``.

    Raises:
        ValueError: A mask of that name is registered already and ``replace`` is False.
    """
    return add_entry(MASKS, mask, 'mask', replace)


def get_mask(name: str) -> Mask:
    """The registered mask of that name: the one place a mask name is checked.

    Args:
        name: A registered mask's name.

    Returns:
        Its ``Mask`` entry.

    Raises:
        ValueError: No mask of that name is registered; the message lists those that are.
    """
    return find_entry(MASKS, name, 'mask', 'snella_seg.snella.masks.register_mask')


register_mask(Mask('magnitude', magnitude_scale))
register_mask(Mask('binary', binary_scale))
