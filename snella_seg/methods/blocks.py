"""Where methods attach in timm's transformer blocks, and the bottleneck several of them share.

Methods attach through forward hooks whose callables are bound methods of the method's own modules, and those
modules are new attributes of the blocks: the base's modules and state-dict keys stay as they are, and
``copy.deepcopy`` and pickling carry the hooks along with the modules they belong to.

Blocks are recognised by their parts (``norm1``, ``attn``, ``norm2``, ``mlp``), as timm's ViT and SAM blocks
have them. A SAM block (``vision_transformer_sam.Block``) takes an (B, H, W, C) grid, windowed when its
``window_size`` is set; inside it, ``norm2`` sees the grid flattened to (B, H*W, C).
"""
from typing import List, Optional, Tuple

import torch
from torch import nn

BLOCK_PARTS = ('norm1', 'attn', 'norm2', 'mlp')


def transformer_blocks(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    """The transformer blocks of ``model`` in forward order, outermost only.

    Args:
        model: A timm ViT or SAM image encoder, or any module containing their blocks.

    Returns:
        ``(name, block)`` pairs.

    Raises:
        ValueError: When ``model`` has no module with the parts of a transformer block.
    """
    found: List[Tuple[str, nn.Module]] = []
    for name, module in model.named_modules():
        if all(isinstance(getattr(module, part, None), nn.Module) for part in BLOCK_PARTS) and not any(
                name.startswith(outer + '.') for outer, _ in found):
            found.append((name, module))
    if not found:
        raise ValueError(f'{type(model).__name__} has no transformer blocks (modules with {", ".join(BLOCK_PARTS)})')
    return found


def is_grid_block(block: nn.Module) -> bool:
    """Whether ``block`` takes an (B, H, W, C) grid rather than a token sequence (SAM's blocks).

    Args:
        block: A transformer block.

    Returns:
        True for a SAM block, windowed or global.
    """
    return hasattr(block, 'window_size')


def add_to_block(block: nn.Module, name: str, module: nn.Module) -> nn.Module:
    """Make ``module`` the attribute ``name`` of ``block``, on the block's device and dtype and in its mode.

    Args:
        block: A transformer block.
        name: The new attribute's name (and state-dict prefix).
        module: The method's module.

    Returns:
        ``module``.

    Raises:
        ValueError: When the block already has an attribute of that name (the method was applied before).
    """
    if hasattr(block, name):
        raise ValueError(f'{type(block).__name__} already has {name!r}: a method applies once to a model; build the '
                         'model afresh to apply it again')
    reference = next(block.parameters())
    setattr(block, name, module.to(device=reference.device, dtype=reference.dtype).train(block.training))
    return module


def remove_hooks_of(model: nn.Module, owner: nn.Module) -> None:
    """Remove from every module of ``model`` the forward and pre-forward hooks that are methods of ``owner``.

    Args:
        model: The model the hooks were registered in.
        owner: The module whose bound methods are the hooks.
    """
    for module in model.modules():
        for hooks in (module._forward_hooks, module._forward_pre_hooks):
            for key in [key for key, hook in hooks.items() if getattr(hook, '__self__', None) is owner]:
                del hooks[key]


class Bottleneck(nn.Module):
    """``scale * up(dropout(act(down(x))))``, zero at initialisation (the up-projection starts at zero).

    The down-projection keeps ``nn.Linear``'s Kaiming-uniform initialisation, as AdaptFormer's code does; both
    biases start at zero.

    Args:
        dim: Width of the tokens.
        bottleneck: Width of the hidden layer.
        act: The nonlinearity between the projections.
        dropout: Dropout on the hidden layer.
        scale: Fixed factor on the output.
    """

    def __init__(self, dim: int, bottleneck: int, act: nn.Module, dropout: float = 0.0, scale: float = 1.0):
        super().__init__()
        self.down = nn.Linear(dim, bottleneck)
        self.act = act
        self.dropout = nn.Dropout(dropout)
        self.up = nn.Linear(bottleneck, dim)
        self.scale = scale
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The bottleneck's output for channel-last tokens ``x``.

        Args:
            x: Tokens of any shape ending in ``dim``.

        Returns:
            A tensor of the shape of ``x``.
        """
        return self.scale * self.up(self.dropout(self.act(self.down(x))))


class MidBlockBranch(nn.Module):
    """A branch that reads the residual stream between a block's attention and its MLP (``norm2``'s input).

    Its output ``delta`` is added to the block's output, so that it joins the residual stream outside the MLP's
    drop-path and layer scale; with ``feeds_mlp`` the MLP also reads ``x + delta`` (a module that transforms the
    stream after attention, as Mona does). Subclasses define ``delta``.

    The delta computed in ``norm2``'s pre-hook waits in ``self.pending`` until the block's hook adds it.
    """
    feeds_mlp = False

    def attach(self, block: nn.Module) -> None:
        """Register the branch's hooks on ``block``.

        Args:
            block: A timm ViT or SAM block.
        """
        self.pending: Optional[torch.Tensor] = None
        block.norm2.register_forward_pre_hook(self.read_stream)
        block.register_forward_hook(self.add_to_output)

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        """What the branch adds to the residual stream ``x`` (``norm2``'s input).

        Args:
            x: The residual stream between attention and MLP.

        Returns:
            A tensor of the shape of ``x``.
        """
        raise NotImplementedError

    def read_stream(self, norm: nn.Module, args: Tuple[torch.Tensor, ...]) -> Optional[Tuple[torch.Tensor, ...]]:
        """Pre-hook of ``norm2``: compute the delta of its input; with ``feeds_mlp``, hand ``norm2`` the moved stream.

        Args:
            norm: The block's ``norm2``.
            args: Its positional inputs; the first is the residual stream.

        Returns:
            ``norm2``'s new inputs with ``feeds_mlp``, else None (inputs unchanged).
        """
        self.pending = self.delta(args[0])
        return (args[0] + self.pending,) + tuple(args[1:]) if self.feeds_mlp else None

    def add_to_output(self, block: nn.Module, args: Tuple, output: torch.Tensor) -> torch.Tensor:
        """Forward hook of the block: add the pending delta to its output.

        Args:
            block: The block.
            args: Its positional inputs.
            output: Its output.

        Returns:
            The output plus the delta, in the output's shape.
        """
        pending, self.pending = self.pending, None
        return output + pending.reshape(output.shape)
