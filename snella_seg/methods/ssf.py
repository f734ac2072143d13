"""SSF: learnable scale and shift of the features after every operation.

Lian et al., "Scaling & Shifting Your Features: A New Baseline for Efficient Model Tuning", NeurIPS 2022. After each
operation ``y = op(x)`` of every block (the attention's ``qkv`` and ``proj``, the MLP's ``fc1`` and ``fc2``, the
norms ``norm1`` and ``norm2``; any Linear or LayerNorm inside a block), the features become
``y' = gamma * y + beta`` per channel. Because the preceding operation is linear (or a norm's affine), the update
merges: ``W' = diag(gamma) W``, ``b' = gamma * b + beta``. The scales start at one and the shifts at zero
(``init_std=0``), so the model is unchanged at initialisation; the authors' code draws them from
N(1, 0.02) and N(0, 0.02), which ``init_std=0.02`` reproduces.
"""
from typing import Iterator, Tuple

import torch
from torch import nn

from .blocks import add_to_block, remove_hooks_of, transformer_blocks
from .registry import Method, MethodReport, freeze, register_method, report


class ScaleShift(nn.Module):
    """``gamma * y + beta`` over the last (channel) axis of the hooked module's output.

    Args:
        dim: Channels of the hooked module's output.
        init_std: Standard deviation of the initial ``gamma`` around one and ``beta`` around zero.
    """

    def __init__(self, dim: int, init_std: float = 0.0):
        super().__init__()
        self.scale = nn.Parameter(1 + init_std * torch.randn(dim))
        self.shift = nn.Parameter(init_std * torch.randn(dim))

    def scale_and_shift(self, module: nn.Module, args: Tuple, output: torch.Tensor) -> torch.Tensor:
        """Forward hook: ``gamma * y + beta`` on the hooked operation's output ``y``, in its dtype.

        Args:
            module: The hooked Linear or LayerNorm.
            args: Its positional inputs.
            output: Its output ``y``, channels last.

        Returns:
            The scaled and shifted output.
        """
        return output * self.scale.to(output.dtype) + self.shift.to(output.dtype)

    @torch.no_grad()
    def fold_into(self, module: nn.Module) -> None:
        """Fold ``gamma`` and ``beta`` into the weight and bias of the Linear or LayerNorm they follow.

        Args:
            module: The hooked module; a bias is created where it had none.
        """
        weight = module.weight
        module.weight.copy_(weight * (self.scale[:, None] if weight.dim() == 2 else self.scale))
        if module.bias is None:
            module.bias = nn.Parameter(torch.zeros_like(self.shift), requires_grad=weight.requires_grad)
        module.bias.copy_(module.bias * self.scale + self.shift)


def ssf_targets(block: nn.Module) -> Iterator[Tuple[str, nn.Module, int]]:
    """The operations of ``block`` that SSF follows: its Linears and affine LayerNorms, with ModuleDict-safe names.

    Args:
        block: A transformer block.

    Yields:
        ``(key, module, channels)`` triples in ``named_modules`` order.
    """
    for name, module in block.named_modules():
        if isinstance(module, nn.Linear):
            yield name.replace('.', '_'), module, module.out_features
        elif isinstance(module, nn.LayerNorm) and module.elementwise_affine and len(module.normalized_shape) == 1:
            yield name.replace('.', '_'), module, module.normalized_shape[0]


def apply_ssf(model: nn.Module, init_std: float = 0.0) -> MethodReport:
    """Freeze ``model`` and add a trainable scale and shift after every Linear and LayerNorm of every block.

    They live in ``block.ssf`` (a ModuleDict keyed by the operation's name, dots as underscores).

    Args:
        model: A timm ViT or SAM image encoder, adapted in place.
        init_std: Spread of the initial scales and shifts; 0 makes SSF the identity at initialisation.

    Returns:
        What trains.
    """
    freeze(model)
    for _, block in transformer_blocks(model):
        targets = list(ssf_targets(block))
        scale_shifts = add_to_block(block, 'ssf', nn.ModuleDict({key: ScaleShift(channels, init_std)
                                                                  for key, _, channels in targets}))
        for key, module, _ in targets:
            module.register_forward_hook(scale_shifts[key].scale_and_shift)
    return report('ssf', model)


def merge_ssf(model: nn.Module) -> nn.Module:
    """Fold every block's scales and shifts into the operations they follow and remove them.

    Args:
        model: A model SSF was applied to.

    Returns:
        ``model``, now with the base's modules only.
    """
    for _, block in transformer_blocks(model):
        if 'ssf' not in block._modules:
            continue
        scale_shifts = block.ssf
        del block.ssf
        for key, module, _ in ssf_targets(block):
            scale_shifts[key].fold_into(module)
            remove_hooks_of(module, scale_shifts[key])
    return model


SSF = register_method(Method(
    name='ssf', apply=apply_ssf, merge=merge_ssf,
    citation='Lian et al. Scaling & Shifting Your Features: A New Baseline for Efficient Model Tuning. NeurIPS 2022'))
