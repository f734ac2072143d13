"""SNELLABackbone on timm ViT and SAM blocks: absorbing norms/activations changes memory only."""
import copy

import snella_seg  # noqa: F401  (registers the components)
import pytest
import torch
from mmseg.registry import MODELS

from snella_seg.snella import merge_snella

from tests.helpers.absorption import absorbed_module_names, assert_absorption_changes_nothing
from tests.helpers.tiny_archs import TINY_SAM, TINY_VIT

TARGETS = [r'.*blocks\.\d+\.attn\.(qkv|proj)', r'.*blocks\.\d+\.mlp\.fc\d']


def build(arch, absorb: bool, img_size: int = 64, **backbone_options):
    torch.manual_seed(0)
    model = MODELS.build(dict(
        type='SNELLABackbone',
        backbone=dict(type='TimmViT', arch=arch, img_size=img_size, out_indices=(1, 3), **backbone_options),
        snella=dict(targets=TARGETS, rank=4, kernel='snella', sparsity=0.4, absorb_activations=absorb)))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if 'norm' in name:  # LayerNorms start at identity: make them matter
                param.add_(torch.randn_like(param) * 0.3)
    return model


@pytest.mark.parametrize('arch,img_size', [(TINY_VIT, 64), (TINY_SAM, 80)], ids=['vit', 'sam-padded-windows'])
def test_absorbing_gives_the_same_features_and_gradients(arch, img_size):
    images = torch.randn(2, 3, img_size, img_size)  # SAM: 5x5 tokens in 2x2 windows, padded
    plain, absorbed = build(arch, False, img_size), build(arch, True, img_size)
    assert absorbed_module_names(plain) == []
    assert_absorption_changes_nothing(plain, absorbed, images)
    assert list(absorbed.state_dict()) == list(plain.state_dict())


def test_vit_blocks_absorb_both_norms_and_the_mlp_activation():
    names = absorbed_module_names(build(TINY_VIT, True))
    assert names == sorted(f'backbone.model.blocks.{i}.{m}' for i in range(4) for m in ('norm1', 'norm2', 'mlp.act'))


def test_sam_blocks_absorb_norm1_unless_windows_pad_after_it():
    names = absorbed_module_names(build(TINY_SAM, True))
    assert names == sorted(f'backbone.model.blocks.{i}.{m}' for i in range(4) for m in ('norm1', 'norm2', 'mlp.act'))
    timm_blocks = build(TINY_SAM, True, efficient_sam_blocks=False)  # timm's blocks pad between norm1 and qkv
    norm1 = [n for n in absorbed_module_names(timm_blocks) if n.endswith('norm1')]
    assert norm1 == ['backbone.model.blocks.1.norm1', 'backbone.model.blocks.3.norm1']  # the global blocks
    assert len([n for n in absorbed_module_names(timm_blocks) if n.endswith(('norm2', 'mlp.act'))]) == 8


def test_merged_backbone_computes_the_same_without_absorption():
    model = build(TINY_VIT, True).eval()
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = model(images)
        merged = copy.deepcopy(model)
        merge_snella(merged.backbone)
        assert absorbed_module_names(merged) == []
        for a, b in zip(merged(images), expected):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
