"""A tiny ViT-shaped model (fused qkv, proj, fc1, fc2) and a pre-norm MLP, for core tests without timm or
OpenMMLab."""
import torch
from torch import nn


class Block(nn.Module):
    def __init__(self, dim: int, heads: int = 2):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = nn.Module()
        self.attn.qkv = nn.Linear(dim, 3 * dim)
        self.attn.proj = nn.Linear(dim, dim)
        self.mlp = nn.Module()
        self.mlp.fc1 = nn.Linear(dim, 2 * dim)
        self.mlp.fc2 = nn.Linear(2 * dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.attn.qkv(self.norm1(x)).view(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        att = torch.softmax(q @ k.transpose(-1, -2) / (c // self.heads) ** 0.5, dim=-1)
        x = x + self.attn.proj((att @ v).transpose(1, 2).reshape(b, n, c))
        return x + self.mlp.fc2(torch.relu(self.mlp.fc1(self.norm2(x))))


class MLP(nn.Module):
    """norm -> fc1 -> act -> fc2, the shape of a transformer MLP with its pre-norm."""

    def __init__(self, dim: int = 8, hidden: int = 16):
        super().__init__()
        self.norm, self.fc1, self.act, self.fc2 = nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.GELU(), \
            nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(self.norm(x))))


class TinyViT(nn.Module):
    def __init__(self, dim: int = 16, depth: int = 2, tokens: int = 6, out: int = 3):
        super().__init__()
        self.embed = nn.Linear(4, dim)
        self.pos = nn.Parameter(torch.randn(1, tokens, dim) * 0.02)
        self.blocks = nn.ModuleList(Block(dim) for _ in range(depth))
        self.head = nn.Linear(dim, out)

    def forward(self, x):
        x = self.embed(x) + self.pos
        for block in self.blocks:
            x = block(x)
        return self.head(x.mean(1))


ALL_TARGETS = [r'blocks\.\d+\.attn\.(qkv|proj)', r'blocks\.\d+\.mlp\.fc\d']
