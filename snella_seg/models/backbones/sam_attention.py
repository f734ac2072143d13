"""SAM attention that does not keep its relative-position bias for backward.

SAM adds to every attention map a bias computed from the queries and the relative-position tables: one
(heads x N x N) tensor per window, 16 x 196 x 196 per window at SAM-L. Whichever attention kernel runs, that bias
(or the probabilities) is stored for backward in every block, 2.3 GB at SAM-L, 512x512, batch 2: more than the
block's own activations. Here the bias and the attention are recomputed in backward from q, k and v, which are
stored anyway. Same outputs and gradients, at the cost of computing attention twice in training.
"""
from typing import Tuple

import torch
import torch.nn.functional as F
from timm.models import vision_transformer_sam
from torch import nn
from torch.utils.checkpoint import checkpoint


class BiasRecomputingAttention(vision_transformer_sam.Attention):
    """timm's SAM ``Attention`` (relative positions, no RoPE, no attention dropout) with its core checkpointed."""

    @classmethod
    def convert(cls, module: nn.Module) -> bool:
        """Make a timm SAM attention of the supported kind this class, in place (same parameters and keys)."""
        supported = (type(module) is vision_transformer_sam.Attention and module.use_rel_pos
                     and module.rope is None and module.attn_drop.p == 0)
        if supported:
            module.__class__ = cls
        return supported

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
        bias = vision_transformer_sam.get_decomposed_rel_pos_bias(q, self.rel_pos_h, self.rel_pos_w, size, size)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, height, width, _ = x.shape
        tokens = height * width
        qkv = self.qkv(x.reshape(batch, tokens, -1)).view(batch, tokens, 3, self.num_heads, -1)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).reshape(3, batch * self.num_heads, tokens, -1).unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        if torch.is_grad_enabled() and (q.requires_grad or self.rel_pos_h.requires_grad):
            x = checkpoint(self._attend, q, k, v, (height, width), use_reentrant=False)
        else:
            x = self._attend(q, k, v, (height, width))
        x = x.view(batch, self.num_heads, tokens, -1).transpose(1, 2).reshape(batch, tokens, -1)
        return self.proj_drop(self.proj(x)).view(batch, height, width, -1)
