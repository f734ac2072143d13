"""Mona: the multi-cognitive visual adapter, after attention and after the MLP of every block.

Yin et al., "5%>100%: Breaking Performance Shackles of Full Fine-Tuning on Visual Recognition Tasks" (CVPR 2025;
arXiv 2023 as "Adapter is All You Need for Tuning Visual Tasks"). Mona transforms the residual stream ``x`` after
each sublayer's residual addition:

    z = W_down (s1 * LN(x) + s2 * x) + b_down               (scaled LayerNorm: s1 = 1e-6, s2 = 1 at init)
    z = z + mean(DWConv3(z), DWConv5(z), DWConv7(z))         (depthwise, on the patch grid)
    z = z + Conv1x1(z)
    Mona(x) = x + W_up dropout(GeLU(z)) + b_up

with a bottleneck of 64 and dropout 0.1 as shipped by the authors. Their code keeps ``nn.Linear``'s initialisation
of ``W_up``; here it starts at zero (and ``b_up`` too), so Mona is the identity at initialisation and training starts
from the pretrained model. Tokens outside the patch grid (a ViT's class and register tokens) skip the convolutions.
Mona is nonlinear: nothing to merge.
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import MidBlockBranch, add_to_block, is_grid_block, transformer_blocks
from .registry import Method, MethodReport, freeze, register_method, report


class PatchGrid:
    """The (H, W) patch grid of the image the model is reading, taken from its patch embedding's input.

    A ViT's blocks see a flat sequence; Mona's convolutions need the grid back.
    """

    def __init__(self):
        self.size: Optional[Tuple[int, int]] = None

    def record(self, patch_embed: nn.Module, args: Tuple[torch.Tensor, ...]) -> None:
        """Pre-hook of the patch embedding: record the grid of the image it is about to read.

        Args:
            patch_embed: timm's ``PatchEmbed``.
            args: Its positional inputs; the first is the (B, C, H, W) image.
        """
        image_size = tuple(args[0].shape[-2:])
        if hasattr(patch_embed, 'dynamic_feat_size'):
            self.size = tuple(patch_embed.dynamic_feat_size(image_size))
        else:
            self.size = tuple(side // patch for side, patch in zip(image_size, patch_embed.patch_size))


class MultiScaleConv(nn.Module):
    """Mona's depthwise 3x3, 5x5 and 7x7 convolutions, averaged with a residual, then a 1x1 with a residual.

    Args:
        channels: Channels of the (B, C, H, W) input.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.depthwise = nn.ModuleList(nn.Conv2d(channels, channels, size, padding=size // 2, groups=channels)
                                       for size in (3, 5, 7))
        self.projector = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the convolutions.

        Args:
            x: A (B, C, H, W) map.

        Returns:
            A map of the shape of ``x``.
        """
        x = x + sum(conv(x) for conv in self.depthwise) / len(self.depthwise)
        return x + self.projector(x)


class Mona(nn.Module):
    """One Mona adapter; ``forward`` returns the delta ``Mona(x) - x``.

    Args:
        dim: Width of the tokens.
        bottleneck: Hidden width.
        dropout: Dropout before the up-projection.
    """

    def __init__(self, dim: int, bottleneck: int = 64, dropout: float = 0.1):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.norm_scale = nn.Parameter(torch.full((dim,), 1e-6))
        self.input_scale = nn.Parameter(torch.ones(dim))
        self.down = nn.Linear(dim, bottleneck)
        self.convs = MultiScaleConv(bottleneck)
        self.dropout = nn.Dropout(dropout)
        self.up = nn.Linear(bottleneck, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor, grid: Tuple[int, int]) -> torch.Tensor:
        """The delta Mona adds to ``x``.

        Args:
            x: (B, H, W, C) grid, or (B, N, C) tokens whose last ``H * W`` are the patch grid in row-major order.
            grid: (H, W) of the patch grid.

        Returns:
            A tensor of the shape of ``x``.
        """
        shape = x.shape
        tokens = x.reshape(shape[0], -1, shape[-1])
        z = self.down(self.norm(tokens) * self.norm_scale + tokens * self.input_scale)
        prefix = z.shape[1] - grid[0] * grid[1]
        patches = z[:, prefix:].transpose(1, 2).reshape(shape[0], -1, *grid)
        patches = self.convs(patches).flatten(2).transpose(1, 2)
        z = torch.cat([z[:, :prefix], patches], dim=1)
        return self.up(self.dropout(F.gelu(z))).reshape(shape)


class BlockGrid:
    """The patch grid a block reads: from its own (B, H, W, C) input (SAM), else from the model's ``PatchGrid``.

    Args:
        image: The model's patch grid, for blocks that read a flat sequence.
    """

    def __init__(self, image: Optional[PatchGrid]):
        self.image = image
        self.own: Optional[Tuple[int, int]] = None

    @property
    def size(self) -> Tuple[int, int]:
        """(H, W) of the grid of the block's current input.

        Raises:
            RuntimeError: For a flat sequence when no image went through the model's patch embedding.
        """
        if self.own is not None:
            return self.own
        if self.image is None or self.image.size is None:
            raise RuntimeError('mona: the patch grid of this token sequence is unknown; run the whole model (its '
                               'patch embedding records the grid), not a block alone')
        return self.image.size

    def record(self, block: nn.Module, args: Tuple[torch.Tensor, ...]) -> None:
        """Pre-hook of the block: record the grid of a (B, H, W, C) input, or forget it for a flat sequence.

        Args:
            block: The block.
            args: Its positional inputs; the first is its input.
        """
        self.own = tuple(args[0].shape[1:3]) if args[0].dim() == 4 else None


class MonaAfterAttention(Mona, MidBlockBranch):
    """Mona on the residual stream between attention and MLP, which the MLP and its residual then read.

    Args:
        dim: Width of the tokens.
        bottleneck: Hidden width.
        dropout: Dropout before the up-projection.
        grid: Where the block's current patch grid is recorded.
    """
    feeds_mlp = True

    def __init__(self, dim: int, bottleneck: int, dropout: float, grid: BlockGrid):
        super().__init__(dim, bottleneck, dropout)
        self.grid = grid

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        """Mona's delta on the residual stream ``x``.

        Args:
            x: The residual stream between attention and MLP (tokens).

        Returns:
            A tensor of the shape of ``x``.
        """
        return self(x, self.grid.size)


class MonaBlock(nn.Module):
    """The two Mona adapters of one block and the hooks that place them.

    Args:
        dim: Width of the tokens.
        bottleneck: Hidden width of each adapter.
        dropout: Dropout in each adapter.
        image_grid: The model's patch grid, for blocks that read a flat sequence.
    """

    def __init__(self, dim: int, bottleneck: int, dropout: float, image_grid: Optional[PatchGrid]):
        super().__init__()
        self.grid = BlockGrid(image_grid)
        self.after_attn = MonaAfterAttention(dim, bottleneck, dropout, self.grid)
        self.after_mlp = Mona(dim, bottleneck, dropout)

    def attach(self, block: nn.Module) -> None:
        """Register the hooks on ``block``: the grid first, then Mona after attention, then after the MLP.

        Args:
            block: A timm ViT or SAM block.
        """
        block.register_forward_pre_hook(self.grid.record)
        self.after_attn.attach(block)
        block.register_forward_hook(self.add_after_mlp)

    def add_after_mlp(self, block: nn.Module, args: Tuple, output: torch.Tensor) -> torch.Tensor:
        """Forward hook of the block (after the branch's own): Mona on the block's output.

        Args:
            block: The block.
            args: Its positional inputs.
            output: Its output, the residual stream after the MLP.

        Returns:
            ``Mona(output)``.
        """
        return output + self.after_mlp(output, self.grid.size)


def apply_mona(model: nn.Module, bottleneck: int = 64, dropout: float = 0.1) -> MethodReport:
    """Freeze ``model`` and add trainable Mona adapters (``block.mona``) after attention and MLP of every block.

    Args:
        model: A timm ViT or SAM image encoder, adapted in place.
        bottleneck: Hidden width of each adapter (64 in the paper).
        dropout: Dropout in each adapter (0.1 in the authors' code).

    Returns:
        What trains.

    Raises:
        ValueError: When blocks read a flat sequence and the model has no ``patch_embed`` to take the grid from.
    """
    blocks = transformer_blocks(model)
    image_grid = None
    if not all(is_grid_block(block) for _, block in blocks):
        patch_embeds = [module for name, module in model.named_modules() if name.split('.')[-1] == 'patch_embed']
        if not patch_embeds:
            raise ValueError(f'mona: {type(model).__name__} has no patch_embed, so the patch grid of its token '
                             'sequence is unknown')
        image_grid = PatchGrid()
    freeze(model)
    for _, block in blocks:
        dim = block.norm1.normalized_shape[-1]
        add_to_block(block, 'mona', MonaBlock(dim, bottleneck, dropout, image_grid)).attach(block)
    if image_grid is not None:
        patch_embeds[0].register_forward_pre_hook(image_grid.record)
    return report('mona', model)


MONA = register_method(Method(
    name='mona', apply=apply_mona,
    not_mergeable_because='its adapters are nonlinear (convolutions and GeLU on the residual stream), not a weight '
                          'delta',
    citation='Yin et al. 5%>100%: Breaking Performance Shackles of Full Fine-Tuning on Visual Recognition Tasks. '
             'CVPR 2025'))
