"""export_deltas / load_deltas: a delta file holds everything but the frozen base, round-trips onto the base, and
refuses a model it does not fit."""
import json
import os
import os.path as osp
import stat

import pytest
import torch
from mmengine.config import Config
from mmseg.apis import inference_model, init_model
from safetensors import safe_open
from safetensors.torch import save_file

from snella_seg.deploy import delta_state, export_deltas, load_deltas

from tests.helpers.log_capture import log_from_here


def test_exported_file_with_the_base_file_predicts_what_the_checkpoint_predicts(ade_root, delta_checkpoint,
                                                                               tmp_path):
    config, checkpoint = delta_checkpoint
    trained = init_model(config, checkpoint, device='cpu')
    path = export_deltas(trained, str(tmp_path / 'trained.safetensors'))
    deployed = init_model(config, None, device='cpu')  # the base comes from the config's pretrained file
    load_deltas(deployed, path)
    image = osp.join(ade_root, 'images', 'validation', 'ADE_val_00000001.jpg')
    expected = inference_model(trained, image).seg_logits.data
    assert torch.equal(inference_model(deployed, image).seg_logits.data, expected)
    assert deployed.dataset_meta['classes'] == list(trained.dataset_meta['classes'])


def test_exported_file_holds_everything_but_the_frozen_base(delta_checkpoint, tmp_path):
    model = init_model(delta_checkpoint[0], delta_checkpoint[1], device='cpu')
    path = export_deltas(model, str(tmp_path / 'trained.safetensors'))
    with safe_open(path, framework='pt') as exported:
        keys, metadata = set(exported.keys()), exported.metadata()
    frozen = {f'backbone.backbone.{k}' for k in model.backbone.backbone.state_dict() if '.deltas.' not in k}
    assert keys == set(model.state_dict()) - frozen - {'backbone.snella_base_fingerprint'}
    assert {k.split('.')[0] for k in keys} == {'backbone', 'neck', 'decode_head', 'auxiliary_head'}
    assert json.loads(metadata['snella'])['rank'] == 4
    assert json.loads(metadata['base_fingerprint']) == model.backbone.base_fingerprint()


def test_deltas_only_file_of_the_first_format_loads_its_updates_with_a_warning(delta_checkpoint, tmp_path, capsys):
    config, checkpoint = delta_checkpoint
    trained = init_model(config, checkpoint, device='cpu')
    path = str(tmp_path / 'v1.safetensors')
    save_file(delta_state(trained), path, metadata={'format': 'snella-deltas-v1'})
    fresh = init_model(config, None, device='cpu')
    log = log_from_here(capsys)
    load_deltas(fresh, path)
    assert 'holds only SNELLA updates' in log()
    for key, value in delta_state(trained).items():
        assert torch.equal(delta_state(fresh)[key], value)


def test_delta_file_is_as_readable_as_other_files(trained_checkpoint, config_file, tmp_path):
    """Regression: safetensors left the exported file readable by its owner only, unlike the checkpoints."""
    path = export_deltas(init_model(config_file, trained_checkpoint, device='cpu'), str(tmp_path / 'd.safetensors'))
    (tmp_path / 'plain').write_text('')
    assert stat.S_IMODE(os.stat(path).st_mode) == stat.S_IMODE(os.stat(tmp_path / 'plain').st_mode)


def test_load_deltas_refuses_a_file_it_did_not_write(delta_checkpoint, tmp_path):
    path = str(tmp_path / 'other.safetensors')
    save_file({'w': torch.ones(1)}, path)
    with pytest.raises(ValueError, match='not a file written by export_deltas'):
        load_deltas(init_model(delta_checkpoint[0], None, device='cpu'), path)


def test_delta_file_for_another_rank_is_refused(trained_checkpoint, config_file, tmp_path):
    path = export_deltas(init_model(config_file, trained_checkpoint, device='cpu'), str(tmp_path / 'd.safetensors'))
    cfg = Config.fromfile(config_file)
    cfg.model.backbone.snella.rank = 8
    with pytest.raises(ValueError, match='does not fit this model'):
        load_deltas(init_model(cfg, None, device='cpu'), path)


def test_delta_file_for_another_mask_is_refused_naming_the_option(trained_checkpoint, config_file, tmp_path):
    """The mask changes no tensor's shape: only the recorded options tell the files apart."""
    path = export_deltas(init_model(config_file, trained_checkpoint, device='cpu'), str(tmp_path / 'd.safetensors'))
    cfg = Config.fromfile(config_file)
    trained_mask = cfg.model.backbone.snella.get('mask', 'magnitude')
    cfg.model.backbone.snella.mask = other_mask = 'binary' if trained_mask == 'magnitude' else 'magnitude'
    refusal = f"does not fit this model: mask: file '{trained_mask}' vs model '{other_mask}'"
    with pytest.raises(ValueError, match=refusal):
        load_deltas(init_model(cfg, None, device='cpu'), path)
