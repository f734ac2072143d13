"""Delta-only checkpoints and exported files name the frozen base they were trained on, and refuse another one."""
import os.path as osp
import re

import pytest
import torch
from mmengine.runner import Runner
from mmseg.apis import init_model

from snella_seg.apis import load_config
from snella_seg.apis import test as evaluate  # not named test_*: pytest would collect it
from snella_seg.utils.checkpoint_loading import load_checkpoint_safely
from snella_seg.deploy import export_deltas, load_deltas
from snella_seg.models.snella_backbone import FINGERPRINT_KEY, decode_fingerprint

from tests.helpers.configs import pretrained_config, save_tiny_vit
from tests.helpers.log_capture import log_from_here
from tests.helpers.tools import run_tool

OVERRIDE = 'model.backbone.check_base=False'


@pytest.fixture(scope='module')
def bases(tmp_path_factory):
    """Two same-shaped base files: the run trains on the first."""
    folder = tmp_path_factory.mktemp('bases')
    return save_tiny_vit(folder / 'vit_trained_on.pth', seed=1), save_tiny_vit(folder / 'vit_other.pth', seed=2)


@pytest.fixture(scope='module')
def delta_run(ade_root, bases, tmp_path_factory):
    """(config file, checkpoint) of a 2-iteration run on the first base, saved by mmengine's Runner."""
    work_dir = str(tmp_path_factory.mktemp('delta_run'))
    cfg = pretrained_config(ade_root, work_dir, bases[0], max_iters=2, checkpoint_interval=2)
    config = osp.join(work_dir, 'config.py')
    cfg.dump(config)
    Runner.from_cfg(cfg).train()
    return config, osp.join(work_dir, 'iter_2.pth')


def test_runner_checkpoint_records_the_base_and_holds_no_frozen_weight(delta_run, bases):
    state = load_checkpoint_safely(delta_run[1])['state_dict']
    assert decode_fingerprint(state[f'backbone.{FINGERPRINT_KEY}'])['file'] == bases[0]
    assert not [k for k in state if k.startswith('backbone.backbone.') and '.deltas.' not in k]


def test_init_model_refuses_the_checkpoint_on_another_base_naming_both_files(delta_run, bases):
    config, checkpoint = delta_run
    with pytest.raises(ValueError) as refused:
        init_model(config, checkpoint, device='cpu', cfg_options={'model.backbone.backbone.pretrained': bases[1]})
    message = str(refused.value)
    assert re.search(f'trained on .*{re.escape(bases[0])}.*holds .*{re.escape(bases[1])}', message)
    assert OVERRIDE in message


def test_tools_test_refuses_the_checkpoint_on_another_base(delta_run, bases, tmp_path):
    """The reported case: tools/test.py evaluated such a checkpoint on another base without a word."""
    config, checkpoint = delta_run
    cfg = load_config(config, str(tmp_path), {'model.backbone.backbone.pretrained': bases[1]})
    with pytest.raises(ValueError, match=f'trained on .*{re.escape(bases[0])}'):
        evaluate(cfg, checkpoint)


def test_check_base_false_loads_the_checkpoint_on_another_base_with_a_warning(delta_run, bases, capsys):
    config, checkpoint = delta_run
    log = log_from_here(capsys)
    model = init_model(config, checkpoint, device='cpu',
                       cfg_options={'model.backbone.backbone.pretrained': bases[1], 'model.backbone.check_base': False})
    assert f'Loading anyway ({OVERRIDE})' in log()
    assert model.backbone.base_fingerprint()['file'] == bases[1]


def test_checkpoint_without_fingerprint_loads_with_a_warning(delta_run, tmp_path, capsys):
    config, checkpoint = delta_run
    saved = load_checkpoint_safely(checkpoint)
    del saved['state_dict'][f'backbone.{FINGERPRINT_KEY}']
    old = str(tmp_path / 'old.pth')
    torch.save(saved, old)
    log = log_from_here(capsys)
    init_model(config, old, device='cpu')
    assert 'records no base fingerprint' in log()


def test_exported_file_on_another_base_is_refused(delta_run, bases, tmp_path):
    config, checkpoint = delta_run
    path = export_deltas(init_model(config, checkpoint, device='cpu'), str(tmp_path / 'trained.safetensors'))
    other = init_model(config, None, device='cpu', cfg_options={'model.backbone.backbone.pretrained': bases[1]})
    with pytest.raises(ValueError, match=f'trained on .*{re.escape(bases[0])}.*{re.escape(OVERRIDE)}'):
        load_deltas(other, path)


def test_demo_cfg_options_reach_the_model(delta_run, bases, ade_root, tmp_path, monkeypatch):
    config, checkpoint = delta_run
    images = osp.join(ade_root, 'images', 'validation')
    other_base = f'model.backbone.backbone.pretrained={bases[1]}'
    with pytest.raises(ValueError, match='trained on'):
        run_tool(monkeypatch, 'demo.py', config, checkpoint, images, '--out-dir', str(tmp_path / 'refused'),
                 '--cfg-options', other_base)
    run_tool(monkeypatch, 'demo.py', config, checkpoint, images, '--out-dir', str(tmp_path / 'overlays'),
             '--cfg-options', other_base, OVERRIDE)
    assert len(list((tmp_path / 'overlays').iterdir())) == 4
