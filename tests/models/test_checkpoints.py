"""Safe checkpoint reading and the key conversions to timm's names."""
import snella_seg  # noqa: F401  (installs the mmcv ops stand-in before mmseg's backbones import)
import numpy as np
import pytest
import torch
from mmengine.logging.history_buffer import HistoryBuffer
from mmseg.models.backbones import VisionTransformer as MMSegViT
from safetensors.torch import save_file
from segment_anything.modeling import ImageEncoderViT
from segment_anything.modeling.image_encoder import get_rel_pos
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from snella_seg.utils.checkpoint_loading import UnsafeCheckpointError
from snella_seg.models.backbones.families import detect_format, summarize_timm_state, to_timm_keys
from snella_seg.models.checkpoints import compare_with_module, read_state_dict, resize_rel_pos
from snella_seg.snella import inject_snella

TENSORS = {'blocks.0.attn.qkv.weight': torch.randn(6, 2), 'pos_embed': torch.randn(1, 5, 2)}


def assert_same_tensors(actual, expected):
    assert actual.keys() == expected.keys()
    assert all(torch.equal(actual[k], expected[k]) for k in expected)


def test_safetensors_round_trip(tmp_path):
    save_file(TENSORS, tmp_path / 'w.safetensors')
    assert_same_tensors(read_state_dict(str(tmp_path / 'w.safetensors')), TENSORS)


@pytest.mark.parametrize('wrap', [
    lambda sd: sd,
    lambda sd: {'state_dict': sd, 'meta': {'epoch': 3}},
    lambda sd: {'model': sd, 'optimizer': {'lr': 0.1}},
    lambda sd: {'module': sd},
    lambda sd: {f'module.{k}': v for k, v in sd.items()},
])
def test_torch_files_are_unwrapped(tmp_path, wrap):
    torch.save(wrap(TENSORS), tmp_path / 'w.pth')
    assert_same_tensors(read_state_dict(str(tmp_path / 'w.pth')), TENSORS)


def test_mmengine_training_checkpoints_are_read(tmp_path):
    """A whole mmseg training checkpoint (message hub and all) serves as pretrained weights."""
    torch.save({'state_dict': TENSORS, 'message_hub': {'log_scalars': {'loss': HistoryBuffer([0.5], [1])}},
                'meta': {'seed': np.int64(0)}}, tmp_path / 'iter_80000.pth')
    assert_same_tensors(read_state_dict(str(tmp_path / 'iter_80000.pth')), TENSORS)


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=r'nope\.pth.*local files only'):
        read_state_dict(str(tmp_path / 'nope.pth'))


class TrainingConfig:
    """Stands for any pickled Python object a downloaded file might carry."""


def test_pickled_objects_are_refused_with_the_fix(tmp_path):
    torch.save({'state_dict': TENSORS, 'config': TrainingConfig()}, tmp_path / 'unsafe.pth')
    with pytest.raises(UnsafeCheckpointError, match=r'(?s)unsafe\.pth.*TrainingConfig.*safetensors'):
        read_state_dict(str(tmp_path / 'unsafe.pth'))


def test_formats_are_detected_from_keys():
    assert detect_format({'image_encoder.blocks.0.mlp.lin1.weight': 0}) == 'sam'
    assert detect_format({'blocks.0.mlp.lin1.weight': 0}) == 'sam'
    assert detect_format({'layers.0.ln1.weight': 0}) == 'mmseg'
    assert detect_format({'backbone.layers.0.ln1.weight': 0}) == 'mmseg'
    assert detect_format({'blocks.0.mlp.fc1.weight': 0}) == 'timm'
    with pytest.raises(ValueError, match='cannot tell the checkpoint format'):
        detect_format({'encoder.layer.0.weight': 0})


def test_official_sam_keys_become_timm_keys_with_or_without_prefix():
    encoder = ImageEncoderViT(img_size=64, embed_dim=32, depth=2, num_heads=2, use_rel_pos=True, window_size=2)
    bare = encoder.state_dict()
    full = {f'image_encoder.{k}': v for k, v in bare.items()}
    full['prompt_encoder.point_embeddings.0.weight'] = torch.zeros(1, 256)
    converted = to_timm_keys(full, 'auto')
    assert_same_tensors(to_timm_keys(bare, 'sam'), converted)
    assert 'blocks.1.mlp.fc2.weight' in converted and not any('lin' in k or 'prompt' in k for k in converted)
    summary = summarize_timm_state(converted)
    assert (summary.family, summary.embed_dim, summary.depth, summary.grid) == ('sam', 32, 2, (4, 4))


def test_mmseg_keys_become_exactly_timm_keys():
    mmseg_vit = MMSegViT(img_size=64, embed_dims=32, num_layers=2, num_heads=2, pre_norm=True, final_norm=True)
    timm_vit = VisionTransformer(img_size=64, embed_dim=32, depth=2, num_heads=2, num_classes=0, pre_norm=True)
    converted = to_timm_keys(mmseg_vit.state_dict(), 'auto')
    expected = timm_vit.state_dict()
    assert converted.keys() == expected.keys()
    assert all(converted[k].shape == expected[k].shape for k in expected)


def test_rel_pos_resize_matches_sam_run_time_interpolation():
    table = torch.randn(15, 8)
    # SAM's get_rel_pos resizes to 7 rows, then entry [q, k] is row q - k + 3: read all 7 rows back.
    by_offset = get_rel_pos(4, 4, table)
    expected = torch.cat([by_offset[0].flip(0), by_offset[1:, 0]])
    torch.testing.assert_close(resize_rel_pos(table, 7), expected)
    assert resize_rel_pos(table, 15).equal(table)


def test_comparison_sees_snella_bases_under_plain_names():
    model = nn.Module()
    model.blocks = nn.ModuleList([nn.Module()])
    model.blocks[0].attn = nn.Module()
    model.blocks[0].attn.qkv = nn.Linear(4, 12)
    plain = {k: v.clone() for k, v in model.state_dict().items()}
    inject_snella(model, [r'.*qkv'], rank=4, kernel='linear')
    assert not compare_with_module(model, plain)
    plain['blocks.0.attn.qkv.weight'] = torch.zeros(12, 5)
    plain['extra'] = torch.zeros(1)
    problems = compare_with_module(model, plain)
    assert problems.unexpected == ['extra'] and not problems.missing
    assert problems.shape_mismatches == ['blocks.0.attn.qkv.weight: checkpoint (12, 5) vs model (12, 4)']
