"""Deployment: merged checkpoints predict what the SNELLA model predicts; delta files round-trip."""
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from mmseg.apis import inference_model, init_model

from snella_seg.export import delta_state, export_deltas, load_deltas, merge_checkpoint
from snella_seg.snella import SNELLALinear

from .conftest import tiny_config


@pytest.fixture
def config_file(ade_root, tmp_path):
    path = tmp_path / 'config.py'
    tiny_config(ade_root, str(tmp_path / 'work')).dump(str(path))
    return str(path)


def test_merged_checkpoint_predicts_the_same(ade_root, trained_checkpoint, config_file, tmp_path):
    checkpoint, merged_config = merge_checkpoint(config_file, trained_checkpoint, str(tmp_path / 'merged'))
    assert 'SNELLA' not in open(merged_config).read().replace('snella_seg', '')
    original = init_model(config_file, trained_checkpoint, device='cpu')
    merged = init_model(merged_config, checkpoint, device='cpu')
    assert not any(isinstance(m, SNELLALinear) for m in merged.modules())
    assert type(merged.backbone).__name__ == 'TimmViT'
    image = osp.join(ade_root, 'images', 'validation', 'ADE_val_00000001.jpg')
    a, b = inference_model(original, image), inference_model(merged, image)
    assert torch.allclose(a.seg_logits.data, b.seg_logits.data, atol=1e-4)
    assert torch.equal(a.pred_sem_seg.data, b.pred_sem_seg.data)
    with pytest.raises(FileExistsError, match='nothing was written'):
        merge_checkpoint(config_file, trained_checkpoint, str(tmp_path / 'merged'))


def test_delta_file_is_small_and_round_trips(trained_checkpoint, config_file, tmp_path):
    model = init_model(config_file, trained_checkpoint, device='cpu')
    path = export_deltas(model, str(tmp_path / 'deltas.safetensors'))
    everything = sum(v.numel() for v in model.state_dict().values())
    assert sum(v.numel() for v in delta_state(model).values()) < 0.2 * everything
    fresh = init_model(config_file, None, device='cpu')
    load_deltas(fresh, path)
    for key, value in delta_state(model).items():
        assert torch.equal(delta_state(fresh)[key], value)


def test_delta_file_for_another_rank_is_refused(trained_checkpoint, config_file, tmp_path):
    path = export_deltas(init_model(config_file, trained_checkpoint, device='cpu'), str(tmp_path / 'd.safetensors'))
    cfg = Config.fromfile(config_file)
    cfg.model.backbone.snella.rank = 8
    with pytest.raises(ValueError, match='does not fit this model'):
        load_deltas(init_model(cfg, None, device='cpu'), path)
