"""SAM 2's Hiera encoder in TimmHiera, from the official ``sam2_hiera_*.pt`` layout.

The official ``sam2`` package is not installed here (and would fetch configs and weights), so TimmHiera is compared with
timm's own HieraDet loaded the timm way (its ``checkpoint_filter_fn``, then a strict load). Checkpoints are written by
the tests with random weights in the official key layout of a tiny Hiera (same keys, small width and depth).
"""
from typing import Dict, Tuple

import snella_seg  # noqa: F401  (registers the components)
import pytest
import timm
import torch
import torch.nn.functional as F
from mmseg.registry import MODELS
from timm.models import hieradet_sam2

from snella_seg.models.backbones import TimmHiera, TimmViT
from snella_seg.models.backbones.families import detect_format
from snella_seg.models.backbones.families.sam2_hiera import hiera_to_timm_keys

from tests.helpers.absorption import absorbed_module_names, assert_absorption_changes_nothing

WIDTH, STAGES, GLOBAL_BLOCK = 16, (1, 2, 3, 1), 4  # block 4: a global block inside stage 2 (same width in and out)
TINY = dict(timm_name='sam2_hiera_large', embed_dim=WIDTH, num_heads=1, stages=STAGES,
            global_att_blocks=(GLOBAL_BLOCK,), window_spec=(8, 4, 4, 2))
DEPTH = sum(STAGES)
STAGE_FIRSTS = (1, 3, 6)  # first blocks of stages 1-3: width doubles, a skip proj and q-pooling
# the skip proj is a Linear in the stage firsts only (an Identity elsewhere), so they are named, as the configs do
TARGETS = [r'.*blocks\.\d+\.attn\.(qkv|proj)', r'.*blocks\.\d+\.mlp\.fc(1|2)', r'.*blocks\.(1|3|6)\.proj']
OUTSIDE_TRUNK = {'image_encoder.neck.convs.0.conv.weight': (8, 128, 1, 1), 'image_encoder.neck.convs.0.conv.bias': (8,),
                 'sam_mask_decoder.iou_token.weight': (1, 8), 'sam_prompt_encoder.no_mask_embed.weight': (1, 8),
                 'memory_attention.layers.0.norm1.weight': (8,), 'memory_encoder.out_proj.weight': (8, 8, 1, 1),
                 'maskmem_tpos_enc': (7, 1, 1, 8), 'no_mem_embed': (1, 1, 8)}


@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(0)


def block_widths() -> Tuple[Tuple[int, int], ...]:
    """(input width, output width) of each block: a stage's first block doubles the width."""
    widths, dim = [], WIDTH
    for stage, blocks in enumerate(STAGES):
        for index in range(blocks):
            dim_out = WIDTH * 2 ** stage
            widths.append((dim, dim_out))
            dim = dim_out
    return tuple(widths)


def official_sam2_state(pos_grid: int = 7) -> Dict[str, torch.Tensor]:
    """The key layout of ``sam2_hiera_large.pt``'s ``model`` (SAM 2's own Hiera: ``mlp.layers.0/1``, a skip ``proj``
    where the width changes), written out by hand, beside a few of the neck, decoder and memory tensors."""
    trunk = {'patch_embed.proj.weight': torch.randn(WIDTH, 3, 7, 7) * 0.1, 'patch_embed.proj.bias': torch.randn(WIDTH),
             'pos_embed': torch.randn(1, WIDTH, pos_grid, pos_grid), 'pos_embed_window': torch.randn(1, WIDTH, 8, 8)}
    for block, (dim, out) in enumerate(block_widths()):
        shapes = {'norm1.weight': (dim,), 'norm1.bias': (dim,), 'attn.qkv.weight': (3 * out, dim),
                  'attn.qkv.bias': (3 * out,), 'attn.proj.weight': (out, out), 'attn.proj.bias': (out,),
                  'norm2.weight': (out,), 'norm2.bias': (out,), 'mlp.layers.0.weight': (4 * out, out),
                  'mlp.layers.0.bias': (4 * out,), 'mlp.layers.1.weight': (out, 4 * out), 'mlp.layers.1.bias': (out,)}
        if dim != out:
            shapes.update({'proj.weight': (out, dim), 'proj.bias': (out,)})
        trunk.update({f'blocks.{block}.{key}': torch.randn(shape) * 0.2 for key, shape in shapes.items()})
    state = {f'image_encoder.trunk.{key}': value for key, value in trunk.items()}
    state.update({key: torch.randn(shape) for key, shape in OUTSIDE_TRUNK.items()})
    return state


def timm_loaded(state: Dict[str, torch.Tensor]) -> torch.nn.Module:
    """timm's HieraDet loaded the timm way: its filter with SAM 2's prefix, then a strict load (the classifier's
    norm, which SAM 2 lacks, removed first, as timm's own note on SAM 2 weights says)."""
    kwargs = {k: v for k, v in TINY.items() if k != 'timm_name'}
    model = timm.create_model('sam2_hiera_large', pretrained=False, num_classes=0, **kwargs)
    model.reset_classifier(0, reset_other=True)
    model.load_state_dict(hieradet_sam2.checkpoint_filter_fn(state, prefix='image_encoder.trunk.'))
    return model.eval()


def save_official(path, state) -> str:
    torch.save({'model': state}, path)  # the release wraps the state dict in 'model'
    return str(path)


def loaded(path, **kwargs) -> TimmHiera:
    backbone = TimmHiera(TINY, pretrained=str(path), **kwargs)
    backbone.init_weights()
    return backbone.eval()


@pytest.mark.parametrize('size', [(64, 64), (96, 64)])
def test_official_sam2_checkpoint_gives_timms_hiera_features_at_every_stage(tmp_path, size):
    state = official_sam2_state()
    reference = timm_loaded(state)
    ours = loaded(save_official(tmp_path / 'sam2_hiera_large.pt', state))
    images = torch.randn(2, 3, *size)
    with torch.no_grad():
        expected = reference.forward_intermediates(images, intermediates_only=True)
        got = ours(images)
    assert [f.shape[1] for f in got] == [WIDTH, 2 * WIDTH, 4 * WIDTH, 8 * WIDTH]
    for got_map, want in zip(got, expected, strict=True):
        torch.testing.assert_close(got_map, want, atol=1e-5, rtol=0)


def test_timms_hiera_layout_loads_too(tmp_path):
    reference = timm_loaded(official_sam2_state())
    torch.save(reference.state_dict(), tmp_path / 'timm.pth')
    ours = loaded(tmp_path / 'timm.pth')
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(images)[3], reference.forward_intermediates(
            images, intermediates_only=True)[3], atol=1e-5, rtol=0)


def test_everything_outside_the_trunk_is_left_out_by_name():
    state, ignored, checkpoint_format = hiera_to_timm_keys(official_sam2_state(), 'auto')
    assert checkpoint_format == 'sam2'
    assert ignored == {'image_encoder.neck': 2, 'sam_mask_decoder': 1, 'sam_prompt_encoder': 1,
                       'memory_attention': 1, 'memory_encoder': 1, 'maskmem_tpos_enc': 1, 'no_mem_embed': 1}
    assert 'blocks.0.mlp.fc1.weight' in state and not any('layers' in k for k in state)


@pytest.mark.parametrize('change,expected', [
    (lambda state: state.pop('image_encoder.trunk.blocks.3.proj.bias'),
     r'missing from the checkpoint \(1\): blocks\.3\.proj\.bias'),
    (lambda state: state.update({'image_encoder.trunk.blocks.1.attn.extra': torch.zeros(1)}),
     r'unexpected in the checkpoint \(1\): blocks\.1\.attn\.extra'),
    (lambda state: state.update({'image_encoder.trunk.pos_embed_window': torch.zeros(1, WIDTH, 4, 4)}),
     r'shape mismatches \(1\): pos_embed_window'),
], ids=['missing', 'unexpected', 'window-table'])
def test_a_sam2_checkpoint_with_a_missing_unexpected_or_misshapen_trunk_key_is_refused(tmp_path, change, expected):
    state = official_sam2_state()
    change(state)
    with pytest.raises(ValueError, match=expected):
        loaded(save_official(tmp_path / 'sam2.pt', state))


def test_a_global_position_table_of_another_size_is_resized_as_hiera_resizes_it(tmp_path):
    state = official_sam2_state(pos_grid=14)  # SAM 2 B+'s 14x14 table into a 7x7 model
    ours = loaded(save_official(tmp_path / 'sam2.pt', state))
    expected = F.interpolate(state['image_encoder.trunk.pos_embed'], size=(7, 7), mode='bicubic')
    torch.testing.assert_close(ours.model.pos_embed.detach(), expected)


def test_sam2_checkpoints_are_detected_and_refused_by_timmvit_with_the_fix(tmp_path):
    state = official_sam2_state()
    assert detect_format(state) == 'sam2'
    backbone = TimmViT(dict(family='sam', embed_dim=WIDTH, depth=2, num_heads=1), img_size=64,
                       pretrained=save_official(tmp_path / 'sam2.pt', state))
    with pytest.raises(ValueError, match="TimmHiera"):
        backbone.init_weights()


@pytest.mark.parametrize('size', [(512, 512), (360, 480), (181, 239)])
def test_each_stage_gives_one_cell_per_started_stride_at_any_size(size):
    ours = TimmHiera(TINY).eval()
    with torch.no_grad():
        shapes = [tuple(f.shape[-2:]) for f in ours(torch.randn(1, 3, *size))]
    assert shapes == [(-(-size[0] // s), -(-size[1] // s)) for s in (4, 8, 16, 32)]


def test_sides_of_whole_strides_are_cropped_from_the_padded_image_not_resampled():
    ours = TimmHiera(TINY).eval()
    images = torch.randn(1, 3, 80, 80)  # whole strides up to 16, padded to 96 for Hiera's windows and poolings
    with torch.no_grad():
        cropped = ours(images)
        padded = ours(F.pad(images, (0, 16, 0, 16)))
    for level, stride in enumerate((4, 8, 16)):
        torch.testing.assert_close(cropped[level], padded[level][..., :80 // stride, :80 // stride], atol=0, rtol=0)


def snella_hiera(absorb: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    model = MODELS.build(dict(
        type='SNELLABackbone', backbone=dict(type='TimmHiera', arch=TINY),
        snella=dict(targets=TARGETS, rank=4, kernel='snella', sparsity=0.4, absorb_activations=absorb)))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if 'norm' in name:  # LayerNorms start at identity
                param.add_(torch.randn_like(param) * 0.3)
    return model.train()


def test_snella_adapts_attention_mlp_and_the_stage_skip_projections():
    names = ('attn.qkv', 'attn.proj', 'mlp.fc1', 'mlp.fc2')
    expected = [f'model.blocks.{i}.{name}' for i in range(DEPTH) for name in names]
    expected += [f'model.blocks.{i}.proj' for i in STAGE_FIRSTS]
    assert sorted(snella_hiera(absorb=True).report.layers) == sorted(expected)


def test_absorbing_into_hiera_blocks_keeps_features_and_gradients():
    plain, absorbed = snella_hiera(absorb=False), snella_hiera(absorb=True)
    # norm1 only in the global block that keeps its width: windowed blocks pad after it, stage firsts share it
    expected = [f'backbone.model.blocks.{i}.{m}' for i in range(DEPTH) for m in ('norm2', 'mlp.act')]
    assert absorbed_module_names(absorbed) == sorted(
        expected + [f'backbone.model.blocks.{GLOBAL_BLOCK}.norm1'])
    images = torch.randn(2, 3, 70, 50)  # off the 32 px multiple: padded, cropped, resampled
    assert_absorption_changes_nothing(plain, absorbed, images)


def test_named_sam2_hiera_l_has_four_stages_at_strides_4_to_32():
    with torch.device('meta'):
        backbone = TimmHiera('sam2-hiera-l')
    assert backbone.channels == (144, 288, 576, 1152) and backbone.strides == (4, 8, 16, 32)
    assert len(backbone.model.blocks) == 48 and backbone.size_divisor == 32
    assert not any(name.startswith('model.head') for name, _ in backbone.named_parameters())
