"""VPT-deep: learned prompt tokens at the input of every block.

Jia et al., "Visual Prompt Tuning", ECCV 2022. Block ``i`` reads ``[P_i; x]``, the ``n`` prompts ``P_i`` of that
block before the tokens ``x``, and the outputs at the prompts' positions are dropped after it, so every block sees
fresh prompts (the paper's ``[x_i, _, E_i] = L_i([x_{i-1}, P_{i-1}, E_{i-1}])``; blocks are permutation-equivariant,
so where the prompts sit in the sequence does not matter). Prompts are drawn from U(-v, v) with
``v = sqrt(6 / (3 * patch_h * patch_w + dim))``, the paper's Xavier-uniform bound. The prompts change what attention
attends to, not a weight: nothing to merge.

SAM's blocks take an (H, W) grid with relative position tables sized for it, windowed or global, so there is no
sequence to prepend to; VPT-deep refuses them and names the block. It refuses models with rotary position embeddings
too (Eva: DINOv3, EVA-02), whose rotations are sized for the image's tokens.
"""
import math
from typing import Tuple

import torch
from torch import nn

from .blocks import add_to_block, is_grid_block, transformer_blocks
from .registry import Method, MethodReport, freeze, register_method, report

ALTERNATIVES = 'adapter, adaptformer, mona, ssf or a LoRA-family method'


def patch_size_of(model: nn.Module) -> Tuple[int, int]:
    """The patch size of ``model``'s patch embedding.

    Args:
        model: A timm ViT (or a module containing one).

    Returns:
        (height, width) of a patch in pixels; (16, 16) when the model has no ``patch_embed``.
    """
    for name, module in model.named_modules():
        if name.split('.')[-1] == 'patch_embed' and hasattr(module, 'patch_size'):
            size = module.patch_size
            return (size, size) if isinstance(size, int) else tuple(size)
    return 16, 16


class DeepPrompts(nn.Module):
    """The prompts of one block, prepended to its input and dropped from its output.

    Args:
        num_tokens: How many prompts.
        dim: Token width.
        bound: Initial prompts are drawn from U(-bound, bound).
        dropout: Dropout on the prompts (the paper's prompt dropout).
    """

    def __init__(self, num_tokens: int, dim: int, bound: float, dropout: float = 0.0):
        super().__init__()
        self.tokens = nn.Parameter(torch.empty(1, num_tokens, dim).uniform_(-bound, bound))
        self.dropout = nn.Dropout(dropout)

    def prepend(self, block: nn.Module, args: Tuple[torch.Tensor, ...]) -> Tuple[torch.Tensor, ...]:
        """Pre-hook of the block: put the prompts before its (B, N, C) input tokens.

        Args:
            block: The block.
            args: Its positional inputs; the first is the tokens.

        Returns:
            The inputs with (B, n + N, C) tokens.
        """
        x = args[0]
        prompts = self.dropout(self.tokens).expand(x.shape[0], -1, -1).to(x.dtype)
        return (torch.cat([prompts, x], dim=1),) + tuple(args[1:])

    def drop(self, block: nn.Module, args: Tuple, output: torch.Tensor) -> torch.Tensor:
        """Forward hook of the block: drop the outputs at the prompts' positions.

        Args:
            block: The block.
            args: Its positional inputs.
            output: Its (B, n + N, C) output.

        Returns:
            The (B, N, C) outputs of the input tokens.
        """
        return output[:, self.tokens.shape[1]:]


def apply_vpt_deep(model: nn.Module, num_tokens: int = 10, dropout: float = 0.0) -> MethodReport:
    """Freeze ``model`` and give every block trainable prompts (``block.prompts``).

    Args:
        model: A timm ViT, adapted in place.
        num_tokens: Prompts per block.
        dropout: Dropout on the prompts.

    Returns:
        What trains.

    Raises:
        ValueError: For a block that takes a grid rather than a token sequence (SAM's), naming it, and for a model
            with rotary position embeddings.
    """
    blocks = transformer_blocks(model)
    rotary = [name for name, module in model.named_modules() if isinstance(getattr(module, 'rope', None), nn.Module)]
    if rotary:
        where = f'{rotary[0]}.rope' if rotary[0] else 'rope'
        raise ValueError(f'vpt_deep: {type(model).__name__} applies rotary position embeddings ({where}) sized for '
                         f"the image's tokens, so prompt tokens cannot be prepended; use {ALTERNATIVES}")
    for name, block in blocks:
        if is_grid_block(block):
            kind = f'windowed, window_size={block.window_size}' if block.window_size else 'global'
            raise ValueError(
                f'vpt_deep: block {name!r} ({type(block).__module__}.{type(block).__name__}, {kind}) takes an '
                '(B, H, W, C) grid with position tables sized for it, not a token sequence, so prompt tokens '
                f'cannot be prepended; for SAM use {ALTERNATIVES}')
    freeze(model)
    bound = math.sqrt(6.0 / (3 * math.prod(patch_size_of(model)) + blocks[0][1].norm1.normalized_shape[-1]))
    for _, block in blocks:
        prompts = add_to_block(block, 'prompts', DeepPrompts(num_tokens, block.norm1.normalized_shape[-1], bound,
                                                             dropout))
        block.register_forward_pre_hook(prompts.prepend)
        block.register_forward_hook(prompts.drop)
    return report('vpt_deep', model)


VPT_DEEP = register_method(Method(
    name='vpt_deep', apply=apply_vpt_deep,
    not_mergeable_because='its prompt tokens are extra inputs that every block attends to, not a weight delta',
    citation='Jia et al. Visual Prompt Tuning. ECCV 2022'))
