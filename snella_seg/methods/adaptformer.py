"""AdaptFormer: a scaled bottleneck in parallel with every block's MLP.

Chen et al., "AdaptFormer: Adapting Vision Transformers for Scalable Visual Recognition", NeurIPS 2022. With
``x`` the residual stream after attention, the block computes
``x + MLP(LN(x)) + s * W_up ReLU(W_down x + b_down) + b_up`` (scaled by ``s = 0.1``, as shipped): the branch reads
the stream itself, beside the norm, and joins outside the MLP's drop-path, as the authors' code does. ``W_down``
keeps ``nn.Linear``'s Kaiming-uniform initialisation, ``W_up`` and the biases start at zero (their "lora" init),
so the block is unchanged at initialisation. The branch is nonlinear: no weight delta, nothing to merge.
"""
import torch
from torch import nn

from .blocks import Bottleneck, MidBlockBranch, add_to_block, transformer_blocks
from .registry import Method, MethodReport, freeze, register_method, report


class ParallelAdapter(Bottleneck, MidBlockBranch):
    """AdaptFormer's branch beside the MLP: a scaled ReLU bottleneck of the residual stream.

    Args:
        dim: Width of the tokens.
        bottleneck: Hidden width.
        scale: The fixed factor ``s`` on the branch.
        dropout: Dropout on the hidden layer.
    """

    def __init__(self, dim: int, bottleneck: int, scale: float, dropout: float):
        super().__init__(dim, bottleneck, nn.ReLU(), dropout, scale)

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        """The scaled bottleneck of the residual stream ``x``.

        Args:
            x: The residual stream between attention and MLP.

        Returns:
            A tensor of the shape of ``x``.
        """
        return self(x)


def apply_adaptformer(model: nn.Module, bottleneck: int = 64, scale: float = 0.1,
                      dropout: float = 0.1) -> MethodReport:
    """Freeze ``model`` and add a trainable AdaptFormer branch (``block.adaptformer``) beside every block's MLP.

    Args:
        model: A timm ViT or SAM image encoder, adapted in place.
        bottleneck: Hidden width of each branch (64 in the paper's image experiments).
        scale: The fixed factor on the branch (0.1 in the paper).
        dropout: Dropout on the hidden layer (0.1 in the authors' code).

    Returns:
        What trains.
    """
    freeze(model)
    for _, block in transformer_blocks(model):
        dim = block.norm2.normalized_shape[-1]
        add_to_block(block, 'adaptformer', ParallelAdapter(dim, bottleneck, scale, dropout)).attach(block)
    return report('adaptformer', model)


ADAPTFORMER = register_method(Method(
    name='adaptformer', apply=apply_adaptformer,
    not_mergeable_because='its branch beside the MLP is a nonlinear bottleneck, not a weight delta',
    citation='Chen et al. AdaptFormer: Adapting Vision Transformers for Scalable Visual Recognition. NeurIPS 2022'))
