"""Adapter: Houlsby's sequential bottleneck after attention and after the MLP of every block.

Houlsby et al., "Parameter-Efficient Transfer Learning for NLP", ICML 2019. Each sublayer's output ``h`` (the
attention's output projection ``attn.proj``, the MLP's ``mlp.fc2``, both before the residual addition) passes through
``h + W_up act(W_down h + b_down) + b_up``. The adapters hook those Linears rather than the sublayers, so that blocks
which call the attention's parts one by one (the project's windowed SAM blocks) are adapted too. ``W_up`` and both
biases start at zero, so the adapter is the identity at initialisation (Houlsby initialises near identity; zero ``W_up``
makes it exact). The adapters add a nonlinearity, so the update is no weight delta and cannot be merged.
"""
from typing import Tuple

import torch
from torch import nn

from .blocks import Bottleneck, add_to_block, transformer_blocks
from .registry import Method, MethodReport, freeze, register_method, report


class SequentialAdapter(Bottleneck):
    """A bottleneck added to the output of the module it hooks: ``h + bottleneck(h)``."""

    def add_to_output(self, module: nn.Module, args: Tuple, output: torch.Tensor) -> torch.Tensor:
        """Forward hook: the hooked Linear's output ``h`` becomes ``h + bottleneck(h)``.

        Args:
            module: The hooked Linear.
            args: Its positional inputs.
            output: Its output ``h``.

        Returns:
            The adapted output.
        """
        return output + self(output)


def apply_adapter(model: nn.Module, bottleneck: int = 64, dropout: float = 0.0) -> MethodReport:
    """Freeze ``model`` and add a trainable adapter after the attention and the MLP of every block.

    The adapters are ``block.adapter_attn`` and ``block.adapter_mlp``, on the outputs of ``attn.proj`` and
    ``mlp.fc2``.

    Args:
        model: A timm ViT or SAM image encoder, adapted in place.
        bottleneck: Hidden width of each adapter.
        dropout: Dropout on the hidden layer.

    Returns:
        What trains.
    """
    freeze(model)
    for _, block in transformer_blocks(model):
        dim = block.norm1.normalized_shape[-1]
        for part, output in (('attn', block.attn.proj), ('mlp', block.mlp.fc2)):
            adapter = add_to_block(block, f'adapter_{part}', SequentialAdapter(dim, bottleneck, nn.GELU(), dropout))
            output.register_forward_hook(adapter.add_to_output)
    return report('adapter', model)


ADAPTER = register_method(Method(
    name='adapter', apply=apply_adapter,
    not_mergeable_because='its bottlenecks add a nonlinearity after the attention and the MLP, not a weight delta',
    citation='Houlsby et al. Parameter-Efficient Transfer Learning for NLP. ICML 2019'))
