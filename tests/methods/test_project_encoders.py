"""Every method on the project's own encoders (``TimmViT``: ViT, SAM, and Eva as DINOv3 builds it), whose SAM windowed
blocks are swapped for ``WindowedQkvBlock``, which calls the attention's parts one by one: a hook on a module that
such a block never calls would leave the method silently inert there. With activation checkpointing too, which reruns
the blocks' hooks."""
import copy

import snella_seg  # noqa: F401  (installs the mmcv ops stand-in before mmseg's backbones import)
import pytest
import torch

from snella_seg.methods import METHODS, get_method
from snella_seg.models.backbones import TimmViT
from snella_seg.models.backbones.sam_attention import WindowedQkvBlock

from tests.helpers.tiny_archs import TINY_SAM, TINY_VIT

ARCHS = {'vit': TINY_VIT, 'sam': TINY_SAM,
         'eva': dict(family='eva', timm_name='vit_large_patch16_dinov3', embed_dim=64, depth=4, num_heads=2)}
IDENTITY_AT_INIT = {'bitfit', 'ln_tune', 'partial', 'adapter', 'adaptformer', 'ssf', 'mona'}
CASES = [(method, family) for family in ARCHS for method in sorted(METHODS)
         if not (family in ('sam', 'eva') and method == 'vpt_deep')]


def encoder(family: str, with_cp: bool = False) -> TimmViT:
    torch.manual_seed(0)
    return TimmViT(arch=ARCHS[family], img_size=64, out_indices=(1, 3), with_cp=with_cp).eval()


def test_the_sam_encoder_has_windowed_blocks_that_call_the_attentions_parts():
    assert any(isinstance(block, WindowedQkvBlock) for block in encoder('sam').model.blocks)


@pytest.mark.parametrize('with_cp', [False, True], ids=['', 'checkpointed'])
@pytest.mark.parametrize('method,family', CASES)
def test_every_method_acts_in_the_projects_encoders(method, family, with_cp):
    base = encoder(family, with_cp)
    adapted = copy.deepcopy(base)
    get_method(method).apply(adapted.model)
    image = torch.randn(2, 3, 60, 52, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = base(image)
        if method in IDENTITY_AT_INIT:
            assert all(torch.equal(a, b) for a, b in zip(adapted(image), expected))
        generator = torch.Generator().manual_seed(2)
        trainable = {name: p for name, p in adapted.named_parameters() if p.requires_grad}
        for parameter in trainable.values():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    adapted.train()
    sum(feature.square().mean() for feature in adapted(image)).backward()
    assert [name for name, p in trainable.items() if not (p.grad is not None and p.grad.abs().sum() > 0)] == []


def test_vpt_deep_refuses_rotary_position_embeddings():
    with pytest.raises(ValueError, match=r'Eva applies rotary position embeddings \(rope\).*use adapter'):
        get_method('vpt_deep').apply(encoder('eva').model)
