"""Images of any size: TimmViT pads to whole patches and returns maps of the image alone, so predictions neither fail
nor shift; the shipped configs' data preprocessor pads to whole patches at test time and crops the predictions.

Sizes are the issue's: 360x480 and 181x239 (smaller than the 512 crop) and 512x683 (wider than it), none of them whole
16 px patches on both sides. Models are tiny (width 32, 4 blocks), built by the shipped configs' code.
"""
import os.path as osp
from typing import Tuple

import snella_seg  # noqa: F401  (installs the mmcv ops stand-in before mmseg's backbones import)
import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmseg.registry import MODELS
from mmseg.structures import SegDataSample
from torch import nn

from snella_seg.apis import predict_overlays
from snella_seg.models.backbones import TimmViT
from snella_seg.models.backbones.families import named_archs
from snella_seg.models.backbones.vit import TIMM_BACKBONE_PREFIX, resample_to_image

from tests.helpers.paths import REPO

DEMO = 'configs/demo/snella_vit-tiny_demo-ade20k.py'
SHIPPED = {'vit': 'configs/snella_vit-b_ade20k.py', 'sam': 'configs/snella_sam-b_ade20k.py'}
WIDTH = 32
TINY = {'vit': dict(family='vit', embed_dim=WIDTH, depth=4, num_heads=2),
        'sam': dict(family='sam', embed_dim=WIDTH, depth=4, num_heads=2, global_attn_indexes=(1, 3), window_size=14)}
SIZES = [(360, 480), (181, 239), (512, 683)]


@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(0)
    init_default_scope('mmseg')


def shrunk_shipped_config(family: str, mode: str, preprocessor_pads: bool) -> Config:
    """The shipped ADE20K config of the family, with a tiny encoder, neck and heads; slide inference as shipped."""
    cfg = Config.fromfile(osp.join(REPO, SHIPPED[family]))
    cfg.model.backbone.backbone.update(arch=TINY[family], out_indices=(0, 1, 2, 3), pretrained=None,
                                       drop_path_rate=0.0)
    cfg.model.backbone.snella.rank = 4
    cfg.model.neck.update(in_channels=[WIDTH] * 4, out_channels=WIDTH)
    cfg.model.decode_head.update(in_channels=[WIDTH] * 4, channels=16, dropout_ratio=0.0, num_classes=5)
    cfg.model.auxiliary_head = None
    if mode == 'whole':
        cfg.model.test_cfg = dict(mode='whole')
    if not preprocessor_pads:  # configs without test_cfg: the backbone's own padding is all there is
        cfg.model.data_preprocessor.test_cfg = None
    return cfg


def segment(model: nn.Module, image: torch.Tensor) -> torch.Tensor:
    """The (H, W) class map of an (H, W, 3) uint8 image through the segmentor's test path."""
    height, width = image.shape[:2]
    sample = SegDataSample(metainfo=dict(img_shape=(height, width), ori_shape=(height, width)))
    with torch.no_grad():
        result = model.test_step(dict(inputs=[image.permute(2, 0, 1)], data_samples=[sample]))[0]
    return result.pred_sem_seg.data[0]


def two_regions(size: Tuple[int, int], boundary: int, axis: int) -> torch.Tensor:
    """A black and a white region meeting at ``boundary`` along ``axis`` (1: a vertical line at that column)."""
    image = torch.zeros(*size, 3, dtype=torch.uint8)
    image[(slice(None),) * axis + (slice(boundary, None),)] = 255
    return image


@torch.no_grad()
def make_position_faithful(encoder: TimmViT) -> TimmViT:
    """Every map becomes its patch's mean colour: patch embedding averages, no positions, blocks pass through."""
    model = encoder.model
    patch = model.patch_embed.proj
    patch.weight.zero_()
    patch.bias.zero_()
    for channel in range(3):
        patch.weight[channel, channel] = 1 / patch.weight[0, 0].numel()
    model.pos_embed.zero_()
    for block in model.blocks:
        for layer in (block.attn.proj, block.mlp.fc2):
            layer.weight.zero_()
            layer.bias.zero_()
    return encoder


def boundary_segmentor(family: str, mode: str, preprocessor_pads: bool) -> nn.Module:
    """The shrunk shipped config with a position-faithful encoder and a linear decode path (no neck): class 1 where
    the mean colour is above mid-grey. Whatever the resolution of the maps, its edge is where the image's is."""
    cfg = shrunk_shipped_config(family, mode, preprocessor_pads)
    cfg.model.data_preprocessor.update(mean=[127.5] * 3, std=[127.5] * 3)
    cfg.model.backbone = cfg.model.backbone.backbone
    cfg.model.neck = None
    cfg.model.decode_head = dict(type='FCNHead', in_channels=WIDTH, in_index=-1, channels=WIDTH, num_convs=0,
                                 concat_input=False, dropout_ratio=0.0, num_classes=2, align_corners=False)
    model = MODELS.build(cfg.model).eval()
    make_position_faithful(model.backbone)
    with torch.no_grad():
        model.decode_head.conv_seg.weight.zero_()
        model.decode_head.conv_seg.bias.zero_()
        model.decode_head.conv_seg.weight[:, 0] = torch.tensor([-1.0, 1.0])[:, None, None]
    return model


@pytest.mark.parametrize('size', SIZES, ids=str)
@pytest.mark.parametrize('preprocessor_pads', [True, False], ids=['test_cfg-pads', 'backbone-pads'])
@pytest.mark.parametrize('mode', ['whole', 'slide'])
@pytest.mark.parametrize('family', ['vit', 'sam'])
def test_shrunk_shipped_config_segments_images_of_any_size(family, mode, preprocessor_pads, size):
    model = MODELS.build(shrunk_shipped_config(family, mode, preprocessor_pads).model).eval()
    image = torch.randint(0, 256, (*size, 3), dtype=torch.uint8)
    assert segment(model, image).shape == size


# A boundary 7/8 of the way along the side that needs the most padding: where a stretched map would be furthest off.
@pytest.mark.parametrize('size', SIZES, ids=str)
@pytest.mark.parametrize('preprocessor_pads', [True, False], ids=['test_cfg-pads', 'backbone-pads'])
@pytest.mark.parametrize('mode', ['whole', 'slide'])
@pytest.mark.parametrize('family', ['vit', 'sam'])
def test_a_two_region_image_is_segmented_where_its_boundary_is(family, mode, preprocessor_pads, size):
    axis = max((0, 1), key=lambda a: -size[a] % 16)
    boundary = size[axis] * 7 // 8
    prediction = segment(boundary_segmentor(family, mode, preprocessor_pads), two_regions(size, boundary, axis))
    first_of_class_1 = (prediction == 1).int().argmax(dim=axis).float()
    assert (first_of_class_1 - boundary).abs().max() <= 2


def test_demo_config_with_patch_8_segments_images_of_any_size():
    cfg = Config.fromfile(osp.join(REPO, DEMO))
    model = MODELS.build(cfg.model).eval()
    for size in [(97, 130), (181, 239)]:
        assert segment(model, torch.randint(0, 256, (*size, 3), dtype=torch.uint8)).shape == size


@pytest.mark.parametrize('arch', [TINY['vit'], TINY['sam'], dict(TINY['vit'], patch_size=8),
                                  dict(TINY['sam'], patch_size=8), dict(TINY['vit'], patch_size=14)],
                         ids=['vit16', 'sam16', 'vit8', 'sam8', 'vit14'])
@pytest.mark.parametrize('size', [(181, 239), (97, 130)], ids=str)
def test_every_family_and_patch_size_gives_one_cell_per_started_patch(arch, size):
    encoder = TimmViT(arch, img_size=128, out_indices=(1, 3)).eval()
    patch = arch.get('patch_size', 16)
    with torch.no_grad():
        maps = encoder(torch.randn(2, 3, *size))
    assert [m.shape for m in maps] == [(2, WIDTH, -(-size[0] // patch), -(-size[1] // patch))] * 2


@pytest.mark.parametrize('family', ['vit', 'sam'])
def test_the_image_is_padded_bottom_right_with_zeros_then_resampled(family):
    encoder = TimmViT(TINY[family], img_size=128, out_indices=(3,)).eval()
    images = torch.randn(1, 3, 181, 239)
    with torch.no_grad():
        padded = encoder(F.pad(images, (0, 1, 0, 11)))[0]
        torch.testing.assert_close(encoder(images)[0], resample_to_image(padded, (181, 239), (16, 16)))


@pytest.mark.parametrize('family', ['vit', 'sam'])
def test_images_of_whole_patches_give_timms_maps_bit_for_bit(family):
    encoder = TimmViT(TINY[family], img_size=128, out_indices=(1, 3), efficient_sam_blocks=False).eval()
    images = torch.randn(1, 3, 176, 240)
    with torch.no_grad():
        expected = encoder.model.forward_intermediates(images, indices=[1, 3], intermediates_only=True)
        assert all(torch.equal(a, b) for a, b in zip(encoder(images), expected, strict=True))


def test_resampling_maps_each_cell_onto_the_image_part_of_the_padded_grid():
    # one row of 3 tokens 16 px apart (centres 8, 24, 40) with values equal to their centre; the image is 36 px wide,
    # so the cells' centres are 6, 18 and 30 px: inside the image the values are linear, outside they are clamped
    row = torch.tensor([[[[8.0, 24.0, 40.0]]]])
    torch.testing.assert_close(resample_to_image(row, (16, 36), (16, 16)), torch.tensor([[[[8.0, 18.0, 30.0]]]]))
    assert resample_to_image(row, (16, 48), (16, 16)) is row


def test_named_archs_pad_images_to_whole_patches():
    with torch.device('meta'):
        embeds = {arch: TimmViT(arch).model.patch_embed for arch in named_archs('TimmViT')}
    assert {arch: embed.dynamic_img_pad for arch, embed in embeds.items()} == {
        arch: True for arch in named_archs('TimmViT')}


def test_rebuilt_mmseg_timm_backbone_pads_too_and_differs_only_by_the_resampling():
    ours = TimmViT(TINY['vit'], img_size=64, out_indices=(1, 3)).eval()
    plain = MODELS.build(ours.mmseg_timm_backbone()).eval()
    plain.load_state_dict({TIMM_BACKBONE_PREFIX + k[len('model.'):]: v for k, v in ours.state_dict().items()})
    images = torch.randn(1, 3, 181, 239)
    with torch.no_grad():
        for a, b in zip(ours(images), plain(images), strict=True):
            torch.testing.assert_close(a, resample_to_image(b, (181, 239), (16, 16)))


def snella_encoder(family: str) -> nn.Module:
    return MODELS.build(dict(
        type='SNELLABackbone',
        backbone=dict(type='TimmViT', arch=TINY[family], img_size=128, out_indices=(1, 3)),
        snella=dict(targets=[r'.*blocks\.\d+\.attn\.(qkv|proj)', r'.*blocks\.\d+\.mlp\.fc(1|2)'], rank=4)))


@pytest.mark.parametrize('family', ['vit', 'sam'])
def test_snella_encoder_trains_on_any_size_under_bf16_autocast(family):
    encoder = snella_encoder(family).train()
    images = torch.randn(2, 3, 97, 130)
    with torch.no_grad():
        reference = encoder(images)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        maps = encoder(images)
    sum(m.float().square().mean() for m in maps).backward()
    assert [m.shape for m in maps] == [(2, WIDTH, 7, 9)] * 2
    for got, expected in zip(maps, reference):
        torch.testing.assert_close(got.float(), expected, atol=0.1, rtol=0.05)
    assert all(p.grad is not None for p in encoder.parameters() if p.requires_grad)


def dumped_checkpoint(model: nn.Module, cfg: Config, folder) -> Tuple[str, str]:
    config_path, checkpoint_path = str(folder / 'config.py'), str(folder / 'model.pth')
    cfg.dump(config_path)
    dataset_meta = dict(classes=tuple(f'c{i}' for i in range(5)), palette=[[i * 50, 0, 0] for i in range(5)])
    torch.save(dict(state_dict=model.state_dict(), meta=dict(dataset_meta=dataset_meta)), checkpoint_path)
    return config_path, checkpoint_path


@pytest.mark.parametrize('preprocessor_pads', [True, False], ids=['test_cfg-pads', 'backbone-pads'])
@pytest.mark.parametrize('family', ['vit', 'sam'])
def test_predict_overlays_paints_images_the_test_pipeline_resizes_off_the_patch_grid(family, preprocessor_pads,
                                                                                      tmp_path):
    cfg = shrunk_shipped_config(family, 'whole', preprocessor_pads)
    config_path, checkpoint_path = dumped_checkpoint(MODELS.build(cfg.model), cfg, tmp_path)
    images = []
    for height, width in [(360, 480), (181, 239)]:  # the ADE20K test pipeline makes them 512x683 and 512x676
        images.append(str(tmp_path / f'image_{height}x{width}.png'))
        cv2.imwrite(images[-1], np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8))
    written = predict_overlays(config_path, checkpoint_path, images, str(tmp_path / 'out'))
    assert [cv2.imread(path).shape[:2] for path in written] == [(360, 480), (181, 239)]
