"""A tiny backbone registered in mmseg's MODELS, and SNELLABackbone built around it, for tests of the wrapper
without timm."""
import torch
from mmengine.model import BaseModule
from mmseg.registry import MODELS

import snella_seg  # noqa: F401  (registers SNELLABackbone)

from .tiny_vit import Block


@MODELS.register_module(force=True)
class TinyTestBackbone(BaseModule):
    """Two ViT blocks over a 4x4 token grid; ``pretrained`` loads a plain state dict in init_weights."""

    def __init__(self, dim=16, pretrained=None, init_cfg=None):
        super().__init__(init_cfg)
        self.pretrained = pretrained
        self.embed = torch.nn.Conv2d(3, dim, 4, 4)
        self.blocks = torch.nn.ModuleList(Block(dim) for _ in range(2))

    def init_weights(self):
        super().init_weights()
        if self.pretrained:
            self.load_state_dict(torch.load(self.pretrained, weights_only=True), strict=False)

    def forward(self, x):
        x = self.embed(x)
        b, c, h, w = x.shape
        x = x.flatten(2).transpose(1, 2)
        for block in self.blocks:
            x = block(x)
        return (x.transpose(1, 2).reshape(b, c, h, w),)


TARGETS = [r'blocks\.\d+\.attn\.(qkv|proj)', r'blocks\.\d+\.mlp\.fc\d']


def build(pretrained=None, save: str = 'auto', check_base: bool = True, **snella) -> torch.nn.Module:
    """SNELLABackbone around TinyTestBackbone; ``snella`` overrides the SNELLA options."""
    args = dict(targets=TARGETS, rank=4)
    args.update(snella)
    return MODELS.build(dict(type='SNELLABackbone', save=save, check_base=check_base,
                             backbone=dict(type='TinyTestBackbone', pretrained=pretrained), snella=args))
