"""A backbone family added from outside the package (one registry entry, with its own checkpoint layout) builds,
loads its own checkpoints and trains like the shipped ones."""
from typing import Dict, Mapping

import pytest
import timm
import torch
from mmseg.registry import MODELS

import snella_seg  # noqa: F401  (registers the components)
from snella_seg.models.backbones import TimmViT
from snella_seg.models.backbones.families import (BACKBONE_FAMILIES, ArchSpec, BackboneFamily, CheckpointFormat,
                                                  detect_format, register_family)
from snella_seg.models.backbones.families.vit import VIT
from snella_seg.models.checkpoints import rename_keys

# A made-up publisher's layout of timm's tiny ViT: everything under ``trunk.``, blocks called stages, attention
# called mixer, and a version tensor that marks the file.
PUBLISHER_TO_TIMM = ((r'^trunk\.', ''), (r'^stages\.', 'blocks.'), (r'\.mixer\.', '.attn.'))
TIMM_TO_PUBLISHER = ((r'^blocks\.', 'stages.'), (r'\.attn\.', '.mixer.'), (r'^', 'trunk.'))
SIZE = 32
TARGETS = [r'.*blocks\.\d+\.attn\.(qkv|proj)', r'.*blocks\.\d+\.mlp\.fc\d']


def publisher_to_timm(state: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    return rename_keys({k: v for k, v in state.items() if k != 'publisher_version'}, PUBLISHER_TO_TIMM)


PUBLISHER = BackboneFamily(
    name='test_publisher', model_type=VIT,
    archs={'test-tiny': ArchSpec('vit', 'vit_tiny_patch16_224', (2, 5, 8, 11), 16, 192, 12)},
    formats=(CheckpointFormat('test_publisher', lambda state: 'publisher_version' in state, publisher_to_timm,
                              'the test publisher (publisher_version, trunk.stages.N.*)'),))


@pytest.fixture
def registered():
    """The test family, for one test; the shipped table again after it."""
    register_family(PUBLISHER)
    yield PUBLISHER
    BACKBONE_FAMILIES.pop(PUBLISHER.name)


@pytest.fixture
def publisher_checkpoint(tmp_path):
    """(path, reference) of timm's tiny ViT saved in the publisher's layout."""
    torch.manual_seed(1)
    reference = timm.create_model('vit_tiny_patch16_224', pretrained=False, img_size=SIZE, num_classes=0)
    state = rename_keys(reference.state_dict(), TIMM_TO_PUBLISHER)
    state['publisher_version'] = torch.tensor(3)
    torch.save(state, tmp_path / 'publisher.pth')
    return str(tmp_path / 'publisher.pth'), reference.eval()


def test_the_registered_layout_is_detected_and_the_arch_is_built(registered, publisher_checkpoint):
    path, _ = publisher_checkpoint
    assert detect_format(torch.load(path)) == 'test_publisher'
    backbone = TimmViT('test-tiny', img_size=SIZE, checkpoint_format='test_publisher')
    assert backbone.out_indices == (2, 5, 8, 11) and backbone.timm_name == 'vit_tiny_patch16_224'


def test_the_registered_family_loads_its_checkpoint_and_gives_timms_features(registered, publisher_checkpoint):
    path, reference = publisher_checkpoint
    backbone = TimmViT('test-tiny', img_size=SIZE, out_indices=(11,), pretrained=path)
    backbone.init_weights()
    images = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        expected = reference.forward_intermediates(images, indices=[11], intermediates_only=True)[0]
        torch.testing.assert_close(backbone.eval()(images)[0], expected, atol=1e-5, rtol=0)


def test_a_checkpoint_of_the_registered_arch_is_named_in_the_mismatch(registered, publisher_checkpoint):
    path, _ = publisher_checkpoint
    backbone = TimmViT(dict(family='vit', embed_dim=192, depth=2, num_heads=3), img_size=SIZE, pretrained=path)
    with pytest.raises(ValueError, match=r"(?s)checkpoint: +vit family, embed_dim 192, depth 12.*like 'test-tiny'"):
        backbone.init_weights()


def test_the_registered_family_trains_through_snella_backbone(registered, publisher_checkpoint):
    path, reference = publisher_checkpoint
    torch.manual_seed(0)
    model = MODELS.build(dict(
        type='SNELLABackbone', backbone=dict(type='TimmViT', arch='test-tiny', img_size=SIZE, out_indices=(5, 11),
                                             pretrained=path),
        snella=dict(targets=TARGETS, rank=4, kernel='snella', sparsity=0.4)))
    model.init_weights()
    assert torch.equal(model.backbone.model.blocks[3].attn.qkv.base.weight, reference.blocks[3].attn.qkv.weight)
    images, targets = torch.randn(2, 3, SIZE, SIZE), torch.randn(2, 192, 2, 2)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(4):
        loss = sum(torch.nn.functional.mse_loss(f, targets) for f in model.train()(images))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert torch.equal(model.backbone.model.blocks[3].attn.qkv.base.weight, reference.blocks[3].attn.qkv.weight)


def test_a_taken_name_arch_or_format_is_refused(registered):
    with pytest.raises(ValueError, match="'test_publisher' is already registered.*replace=True"):
        register_family(PUBLISHER)
    with pytest.raises(ValueError, match=r"archs \['vit-b'\].*registered by another family"):
        register_family(BackboneFamily('test_copy', VIT, archs={'vit-b': PUBLISHER.archs['test-tiny']}))
    with pytest.raises(ValueError, match=r"checkpoint formats \['timm'\].*registered by another family"):
        register_family(BackboneFamily('test_copy', VIT, formats=(CheckpointFormat('timm', bool, dict, 'x'),)))
    assert register_family(PUBLISHER, replace=True) is BACKBONE_FAMILIES['test_publisher']


def test_the_shipped_table_knows_nothing_of_the_test_family(publisher_checkpoint):
    with pytest.raises(ValueError, match='unknown arch'):
        TimmViT('test-tiny')
    with pytest.raises(ValueError, match='cannot tell the checkpoint format'):
        detect_format(torch.load(publisher_checkpoint[0]))
