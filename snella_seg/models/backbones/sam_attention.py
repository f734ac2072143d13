"""SAM attention and windowed blocks that store less for backward and compute nothing on window padding.

SAM adds to every attention map a bias computed from the queries and the relative-position tables: one
(heads x N x N) tensor per window, 16 x 196 x 196 per window at SAM-L. Whichever attention kernel runs, that bias
(or the probabilities) is stored for backward in every block, 2.3 GB at SAM-L, 512x512, batch 2: more than the
block's own activations. ``BiasRecomputingAttention`` recomputes the bias and the attention in backward from q, k
and v, which are stored anyway: same outputs and gradients, at the cost of computing attention twice in training.

SAM's windowed blocks pad the normalized tokens to whole windows (32x32 tokens to 42x42 at 512x512 with 14x14
windows) before qkv, so qkv and proj run on 1.7x the tokens and store 1.7x their inputs. A zero token's qkv is
the qkv bias, so ``WindowedQkvBlock`` computes qkv and proj on the image's tokens and pads qkv's output with its
bias instead: the same attention, less stored and computed, and norm1 then feeds qkv alone, so SNELLA can absorb
it (``models/backbones/families/sam.py``).
"""
from typing import Tuple

import torch
import torch.nn.functional as F
from timm.models import vision_transformer_sam
from torch import nn
from torch.utils.checkpoint import checkpoint


def decomposed_rel_pos_bias(q: torch.Tensor, rel_pos_h: torch.Tensor, rel_pos_w: torch.Tensor,
                            size: Tuple[int, int]) -> torch.Tensor:
    """Compute timm's ``get_decomposed_rel_pos_bias`` for queries and keys on one grid, bit for bit.

    The two einsums return permuted layouts, so timm's broadcast sum comes out permuted as well and its final
    reshape copies the whole (heads x N x N) bias. Made contiguous first (they are N x sqrt(N) each), the sum is laid
    out as the bias and the reshape is a view: half the time and no second bias-sized tensor.

    Args:
        q: (batch x heads, tokens, head_dim) queries.
        rel_pos_h: The relative-position table along the height.
        rel_pos_w: The relative-position table along the width.
        size: (height, width) of the token grid, height x width = tokens.

    Returns:
        The (batch x heads, tokens, tokens) attention bias.
    """
    height, width = size
    rel_h = vision_transformer_sam.get_rel_pos(height, height, rel_pos_h)
    rel_w = vision_transformer_sam.get_rel_pos(width, width, rel_pos_w)
    grid_q = q.reshape(q.shape[0], height, width, -1)
    along_h = torch.einsum('bhwc,hkc->bhwk', grid_q, rel_h).contiguous()
    along_w = torch.einsum('bhwc,wkc->bhwk', grid_q, rel_w).contiguous()
    return (along_h[..., :, None] + along_w[..., None, :]).view(-1, height * width, height * width)


class BiasRecomputingAttention(vision_transformer_sam.Attention):
    """timm's SAM ``Attention`` (relative positions, no RoPE, no attention dropout) with its core checkpointed."""

    @classmethod
    def convert(cls, module: nn.Module) -> bool:
        """Make a timm SAM attention of the supported kind this class, in place (same parameters and keys).

        Args:
            module: Any module; only a timm SAM ``Attention`` with relative positions, no RoPE and no attention
                dropout is converted.

        Returns:
            Whether ``module`` was converted.
        """
        supported = (type(module) is vision_transformer_sam.Attention and module.use_rel_pos
                     and module.rope is None and module.attn_drop.p == 0)
        if supported:  # a class swap: timm's SAM Block builds Attention itself (see TimmViT.__init__)
            module.__class__ = cls
        return supported

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
        """Return SDPA of (batch, heads, tokens, head_dim) q/k/v with the relative-position bias as a 4-D mask.

        CUDA's memory-efficient kernel takes only this 4-D layout; with 3-D inputs PyTorch falls back to the math
        kernel, which materialises the attention matrix (and upcasts bf16).
        """
        batch, heads, tokens, _ = q.shape
        bias = decomposed_rel_pos_bias(q.reshape(batch * heads, tokens, -1), self.rel_pos_h, self.rel_pos_w, size)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias.view(batch, heads, tokens, tokens))

    def attend(self, qkv: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
        """Attention of qkv over a grid, heads merged, before proj.

        Args:
            qkv: (batch, tokens, 3 x dim) output of the qkv projection.
            size: (height, width) of the token grid, height x width = tokens.

        Returns:
            (batch, tokens, dim) attention output.
        """
        batch, tokens, _ = qkv.shape
        q, k, v = qkv.view(batch, tokens, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        if torch.is_grad_enabled() and (q.requires_grad or self.rel_pos_h.requires_grad):
            x = checkpoint(self._attend, q, k, v, size, use_reentrant=False)
        else:
            x = self._attend(q, k, v, size)
        return x.transpose(1, 2).reshape(batch, tokens, -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Attend over the whole grid (or one window) as timm's SAM attention does.

        Args:
            x: (batch, height, width, dim) tokens.

        Returns:
            (batch, height, width, dim) output, after proj.
        """
        batch, height, width, _ = x.shape
        x = self.attend(self.qkv(x.reshape(batch, height * width, -1)), (height, width))
        return self.proj_drop(self.proj(x)).view(batch, height, width, -1)


class WindowedQkvBlock(vision_transformer_sam.Block):
    """timm's SAM ``Block`` with window attention whose qkv and proj see only the image's tokens."""

    @classmethod
    def convert(cls, block: nn.Module) -> bool:
        """Make a windowed timm SAM block with a ``BiasRecomputingAttention`` this class, in place.

        Args:
            block: Any module; only a windowed timm SAM ``Block`` is converted.

        Returns:
            Whether ``block`` was converted.
        """
        supported = (type(block) is vision_transformer_sam.Block and block.window_size > 0
                     and type(block.attn) is BiasRecomputingAttention)
        if supported:  # a class swap: timm's block_fn would make global blocks this class too (TimmViT.__init__)
            block.__class__ = cls
        return supported

    def _pad_with_bias(self, qkv: torch.Tensor) -> torch.Tensor:
        """Return (batch, H, W, 3 x dim) padded to whole windows with what qkv gives a zero token: its bias."""
        batch, height, width, channels = qkv.shape
        size = self.window_size
        pad_h, pad_w = -height % size, -width % size
        if not (pad_h or pad_w):
            return qkv
        bias = self.attn.qkv.bias
        if bias is None:
            return F.pad(qkv, (0, 0, 0, pad_w, 0, pad_h))
        padded = bias.to(qkv.dtype).expand(batch, height + pad_h, width + pad_w, channels).clone()
        padded[:, :height, :width] = qkv
        return padded

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run the block as timm's windowed SAM block does, with qkv and proj on the image's tokens only.

        Args:
            x: (batch, height, width, dim) tokens.

        Returns:
            (batch, height, width, dim) output.
        """
        batch, height, width, dim = x.shape
        shortcut, attn, size = x, self.attn, self.window_size
        qkv = attn.qkv(self.norm1(x).reshape(batch, height * width, dim)).view(batch, height, width, -1)
        windows, pad_hw = vision_transformer_sam.window_partition(self._pad_with_bias(qkv), size)
        out = attn.attend(windows.reshape(windows.shape[0], size * size, -1), (size, size))
        out = vision_transformer_sam.window_unpartition(out.view(-1, size, size, dim), size, (height, width), pad_hw)
        out = attn.proj_drop(attn.proj(out.reshape(batch, height * width, dim)))
        out = self.ls1(out.view(batch, height, width, dim))
        if self.training and not isinstance(self.drop_path1, nn.Identity):
            # timm drops the attention output of whole windows: draw the same per-window mask, spread it on tokens
            keep = self.drop_path1(out.new_ones(windows.shape[0], 1, 1, 1)).expand(-1, size, size, 1)
            out = out * vision_transformer_sam.window_unpartition(keep, size, (height, width), pad_hw)
        x = shortcut + out
        x = x.reshape(batch, height * width, dim)
        x = x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
        return x.reshape(batch, height, width, dim)
