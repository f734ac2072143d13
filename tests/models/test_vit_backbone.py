"""TimmViT against the real peers: the official SAM image encoder, timm's ViT and mmseg's VisionTransformer.

All models are tiny (embed_dim 64, 4 blocks, 64-128 px) but built by the same code as the full-size ones.
"""
import json
import re
from functools import partial

import snella_seg  # noqa: F401  (installs the mmcv ops stand-in before mmseg's backbones import)
import pytest
import timm
import torch
from mmseg.models.backbones import VisionTransformer as MMSegViT
from mmengine.registry import DefaultScope
from mmseg.registry import MODELS
from segment_anything.modeling import ImageEncoderViT
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from snella_seg.models.backbones import TimmViT
from snella_seg.models.backbones.vit import TIMM_BACKBONE_PREFIX
from snella_seg.snella import SNELLALinear, inject_snella

from tests.helpers.tiny_archs import TINY_SAM, TINY_VIT

SNELLA_TARGETS = [r'.*blocks\.\d+\.attn\.qkv', r'.*blocks\.\d+\.mlp\.fc\d']
ATOL = 1e-4


@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def mmseg_scope():
    """Builds resolve in mmseg's scope whichever scope an earlier test in this process left current."""
    with DefaultScope.overwrite_default_scope('mmseg'):
        yield


@torch.no_grad()
def randomize(module: nn.Module) -> nn.Module:
    """Perturb every parameter, so zero-initialized ones (position tables, biases) take part in the comparison."""
    for param in module.parameters():
        param.add_(torch.randn_like(param) * 0.05)
    module.eval()  # mmseg's ViT.train() returns None, so no chaining
    return module


def official_sam_encoder(img_size: int = 64) -> ImageEncoderViT:
    return randomize(ImageEncoderViT(
        img_size=img_size, patch_size=16, embed_dim=64, depth=4, num_heads=2, use_rel_pos=True, window_size=2,
        global_attn_indexes=(1, 3), norm_layer=partial(nn.LayerNorm, eps=1e-6)))


@torch.no_grad()
def official_block_outputs(encoder: ImageEncoderViT, images: torch.Tensor) -> list:
    """Every block's output of the official encoder, NCHW, i.e. what its forward computes before the neck."""
    x = encoder.patch_embed(images) + encoder.pos_embed
    outputs = []
    for block in encoder.blocks:
        x = block(x)
        outputs.append(x.permute(0, 3, 1, 2))
    return outputs


def save_official_sam(encoder: ImageEncoderViT, path) -> str:
    """The layout of ``sam_vit_b_01ec64.pth``: the whole SAM model, the encoder under ``image_encoder.``."""
    state = {f'image_encoder.{k}': v for k, v in encoder.state_dict().items()}
    state['mask_decoder.output_upscaling.0.weight'] = torch.randn(8, 4, 2, 2)
    torch.save(state, path)
    return str(path)


def loaded(arch, path, **kwargs) -> TimmViT:
    backbone = TimmViT(arch, pretrained=str(path), **kwargs)
    backbone.init_weights()
    return backbone.eval()


def assert_all_close(ours, reference):
    assert len(ours) == len(reference)
    for a, b in zip(ours, reference):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, atol=ATOL, rtol=0)


def test_sam_matches_official_encoder_before_neck(tmp_path):
    encoder = official_sam_encoder()
    path = save_official_sam(encoder, tmp_path / 'sam.pth')
    backbone = loaded(TINY_SAM, path, img_size=64, out_indices=(1, 3))
    # SAM's eps; timm's samvit default (1e-5) would shift features by ~1e-5, under this test's tolerance.
    assert {m.eps for m in backbone.modules() if isinstance(m, nn.LayerNorm)} == {1e-6}
    images = torch.randn(2, 3, 64, 64)
    reference = official_block_outputs(encoder, images)
    with torch.no_grad():
        assert_all_close(backbone(images), [reference[1], reference[3]])


def test_sam_checkpoint_fits_another_img_size(tmp_path):
    """A 128 px checkpoint in a 64 px model equals the 128 px model resizing its tables at run time."""
    path = save_official_sam(official_sam_encoder(img_size=128), tmp_path / 'sam128.pth')
    small = loaded(TINY_SAM, path, img_size=64)
    native = loaded(TINY_SAM, path, img_size=128)
    assert small.model.pos_embed.shape == (1, 4, 4, 64)
    assert small.model.blocks[1].attn.rel_pos_h.shape == (7, 32)
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert_all_close(small(images), native(images))


def timm_vit_checkpoint(path, img_size: int = 64, **kwargs) -> VisionTransformer:
    reference = randomize(VisionTransformer(img_size=img_size, patch_size=16, embed_dim=64, depth=4, num_heads=2,
                                            num_classes=10, **kwargs))
    torch.save(reference.state_dict(), path)
    return reference


def test_vit_matches_timm_forward_intermediates(tmp_path):
    reference = timm_vit_checkpoint(tmp_path / 'vit.pth')
    backbone = loaded(TINY_VIT, tmp_path / 'vit.pth', img_size=64, out_indices=(1, 3))
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = reference.forward_intermediates(images, indices=[1, 3], intermediates_only=True)
        assert_all_close(backbone(images), expected)


def test_vit_position_embedding_follows_img_size_and_input_size(tmp_path):
    reference = timm_vit_checkpoint(tmp_path / 'vit.pth', dynamic_img_size=True)
    backbone = loaded(TINY_VIT, tmp_path / 'vit.pth', img_size=128)
    assert backbone.model.pos_embed.shape == (1, 1 + 8 * 8, 64)
    images = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        expected = reference.forward_intermediates(images, indices=[3], intermediates_only=True)
        assert_all_close(backbone(images), expected)
        assert backbone(torch.randn(1, 3, 96, 160))[0].shape == (1, 64, 6, 10)


def test_sam_accepts_inputs_other_than_img_size():
    backbone = TimmViT(TINY_SAM, img_size=64).eval()
    with torch.no_grad():
        assert backbone(torch.randn(1, 3, 96, 128))[0].shape == (1, 64, 6, 8)


def test_mmseg_vit_checkpoint_matches_mmseg_forward(tmp_path):
    """mmseg's nn.MultiheadAttention computes the same attention as timm's fused qkv, so outputs agree."""
    mmseg_vit = randomize(MMSegViT(img_size=64, patch_size=16, embed_dims=64, num_layers=4, num_heads=2,
                                   out_indices=(1, 3), final_norm=True, norm_cfg=dict(type='LN', eps=1e-6)))
    segmentor_state = {f'backbone.{k}': v for k, v in mmseg_vit.state_dict().items()}
    segmentor_state['decode_head.conv_seg.weight'] = torch.randn(2, 8, 1, 1)
    torch.save(dict(state_dict=segmentor_state, meta=dict(epoch=3)), tmp_path / 'mmseg.pth')
    backbone = loaded(TINY_VIT, tmp_path / 'mmseg.pth', img_size=64, out_indices=(1, 3), final_norm=True)
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert_all_close(backbone(images), mmseg_vit(images))


def test_loads_into_snella_bases_and_equals_official_with_zero_updates(tmp_path):
    encoder = official_sam_encoder()
    path = save_official_sam(encoder, tmp_path / 'sam.pth')
    backbone = TimmViT(TINY_SAM, img_size=64, out_indices=(3,), pretrained=path)
    report = inject_snella(backbone, SNELLA_TARGETS, rank=4, kernel='linear')
    assert report.layers[0] == 'model.blocks.0.attn.qkv'
    backbone.init_weights()
    qkv = backbone.model.blocks[0].attn.qkv
    assert isinstance(qkv, SNELLALinear)
    torch.testing.assert_close(qkv.base.weight, encoder.blocks[0].attn.qkv.weight)
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert_all_close(backbone.eval()(images), official_block_outputs(encoder, images)[3:])


def test_snella_backbone_config_loads_pretrained_in_init_weights(tmp_path):
    encoder = official_sam_encoder()
    path = save_official_sam(encoder, tmp_path / 'sam.pth')
    model = MODELS.build(dict(
        type='SNELLABackbone',
        backbone=dict(type='TimmViT', arch=TINY_SAM, img_size=64, out_indices=(3,), pretrained=path),
        snella=dict(targets=SNELLA_TARGETS, rank=4, kernel='linear')))
    model.init_weights()
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert_all_close(model.eval()(images), official_block_outputs(encoder, images)[3:])


def test_vit_checkpoint_into_sam_backbone_names_both_architectures(tmp_path):
    timm_vit_checkpoint(tmp_path / 'vit.pth')
    with pytest.raises(ValueError, match=r'(?s)built: +sam family.*checkpoint: +vit family.*Nothing was loaded'):
        loaded(TINY_SAM, tmp_path / 'vit.pth', img_size=64)


def test_wrong_width_lists_shape_mismatches_and_loads_nothing(tmp_path):
    path = save_official_sam(official_sam_encoder(), tmp_path / 'sam.pth')
    backbone = TimmViT(dict(TINY_SAM, embed_dim=32), img_size=64, pretrained=path)
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    with pytest.raises(ValueError) as error:
        backbone.init_weights()
    message = str(error.value)
    assert 'embed_dim 32' in message and 'embed_dim 64' in message
    assert 'shape mismatches (59)' in message
    assert 'patch_embed.proj.weight: checkpoint (64, 3, 16, 16) vs model (32, 3, 16, 16)' in message
    assert all(torch.equal(v, before[k]) for k, v in backbone.state_dict().items())


@pytest.mark.parametrize('depth, expected', [(2, 'unexpected in the checkpoint (28)'),
                                             (6, 'missing from the checkpoint (28)')])
def test_wrong_depth_names_the_disagreeing_blocks(tmp_path, depth, expected):
    path = save_official_sam(official_sam_encoder(), tmp_path / 'sam.pth')
    arch = dict(TINY_SAM, depth=depth, global_attn_indexes=(1,))
    with pytest.raises(ValueError, match=rf'(?s)depth {depth}.*depth 4.*{re.escape(expected)}'):
        loaded(arch, path, img_size=64)


def test_truncated_blocks_and_removed_neck_are_not_parameters(tmp_path):
    path = save_official_sam(official_sam_encoder(), tmp_path / 'sam.pth')
    backbone = loaded(TINY_SAM, path, img_size=64, out_indices=(0, 2))
    names = [n for n, _ in backbone.named_parameters()]
    assert len(backbone.model.blocks) == 3
    assert not any(n.startswith(('model.neck', 'model.head')) for n in names)
    assert 'model.blocks.2.mlp.fc2.weight' in names


def test_invalid_options_are_clear_errors():
    with pytest.raises(ValueError, match='unknown arch'):
        TimmViT('vit-x')
    with pytest.raises(ValueError, match='increasing block indices'):
        TimmViT(TINY_VIT, img_size=64, out_indices=(3, 1))
    with pytest.raises(ValueError, match='no final LayerNorm'):
        TimmViT(TINY_SAM, img_size=64, final_norm=True)
    with pytest.raises(ValueError, match='checkpoint_format'):
        TimmViT(TINY_VIT, img_size=64, checkpoint_format='jax')


def test_sam_b_parameter_count_is_timm_encoder_without_neck():
    ours = TimmViT('sam-b', img_size=1024)
    full = timm.create_model('samvit_base_patch16', pretrained=False, num_classes=0)
    neck = sum(p.numel() for p in full.neck.parameters())
    count = sum(p.numel() for p in ours.parameters())
    assert round(sum(p.numel() for p in full.parameters()) / 1e6, 2) == 89.67
    assert count == sum(p.numel() for p in full.parameters()) - neck
    assert ours.out_indices == (3, 5, 7, 11)
    assert {m.eps for m in ours.modules() if isinstance(m, nn.LayerNorm)} == {1e-6}


@pytest.mark.parametrize('arch, img_size', [(TINY_VIT, 64), ('vit-b', 32)])
def test_vit_rebuilt_as_mmseg_timm_backbone_computes_the_same(arch, img_size):
    ours = randomize(TimmViT(arch, img_size=img_size, out_indices=(1, 3)))
    config = ours.mmseg_timm_backbone()
    json.dumps(config)  # plain data: a config file can carry it
    plain = MODELS.build(config).eval()
    renamed = {TIMM_BACKBONE_PREFIX + k[len('model.'):]: v for k, v in ours.state_dict().items()}
    plain.load_state_dict(renamed, strict=True)
    images = torch.randn(2, 3, img_size + 16, img_size)  # another size than img_size: position embedding resampled
    with torch.no_grad():
        for a, b in zip(ours(images), plain(images), strict=True):
            assert torch.equal(a, b)


def test_what_timm_backbone_cannot_build_is_refused_with_the_reason():
    with pytest.raises(ValueError, match='eps 1e-5'):
        TimmViT(TINY_SAM, img_size=64).mmseg_timm_backbone()
    with pytest.raises(ValueError, match='final_norm'):
        TimmViT(TINY_VIT, img_size=64, final_norm=True).mmseg_timm_backbone()
    # The reason SAM stays TimmViT: timm.create_model drops norm_layer=None, so SAM gets its class default.
    # If this starts failing, timm honours None and SAM can be built by TIMMBackbone too.
    sam = timm.create_model('samvit_base_patch16', pretrained=False, img_size=64, depth=1, norm_layer=None)
    assert {m.eps for m in sam.modules() if type(m) is nn.LayerNorm} == {1e-5}
