"""Deployment: merged checkpoints predict what the SNELLA model predicts; delta files round-trip."""
import json
import os
import os.path as osp
import stat
import subprocess
import sys

import pytest
import torch
from mmengine.config import Config
from mmengine.logging import MMLogger
from mmseg.apis import inference_model, init_model

from mmseg.datasets import ADE20KDataset
from safetensors import safe_open
from safetensors.torch import save_file

from snella_seg.utils import mmcv_lite
from snella_seg.deploy import delta_state, export_deltas, load_deltas, merge_checkpoint, trained_state
from snella_seg.snella import SNELLALinear

from ..engine.test_snella_backbone import log_from_here
from .conftest import REPO, tiny_config
from .test_base_fingerprint import pretrained_config, run_tool, save_tiny_vit


@pytest.fixture
def config_file(ade_root, tmp_path):
    path = tmp_path / 'config.py'
    tiny_config(ade_root, str(tmp_path / 'work')).dump(str(path))
    return str(path)


@pytest.fixture
def delta_checkpoint(ade_root, tmp_path):
    """(config file, delta-only checkpoint) of a model on a pretrained base whose updates, neck, heads and head
    buffers all moved away from their initial values, as training moves them."""
    cfg = pretrained_config(ade_root, str(tmp_path / 'work'), save_tiny_vit(tmp_path / 'vit.pth', seed=1))
    config = str(tmp_path / 'pretrained_config.py')
    cfg.dump(config)
    model = init_model(config, None, device='cpu')
    model.init_weights()
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(torch.randn_like(param) * 0.05)
        for name, buffer in model.named_buffers():
            if not name.startswith('backbone.') and buffer.is_floating_point():  # BN statistics of neck and heads
                buffer.add_(0.1)
    checkpoint = str(tmp_path / 'delta.pth')
    torch.save({'state_dict': model.state_dict(), 'meta': {'dataset_meta': dict(ADE20KDataset.METAINFO)}},
               checkpoint)
    return config, checkpoint


# Runs the merged model where importing snella_seg fails. Only the mmcv ops stand-in is loaded, by file path and
# only when mmcv has no compiled ops (mmcv-lite), because mmseg itself cannot import without it there.
WITHOUT_SNELLA_SEG = """
import importlib.util, sys
sys.modules['snella_seg'] = None
spec = importlib.util.spec_from_file_location('mmcv_ops_stand_in', sys.argv[1])
stand_in = importlib.util.module_from_spec(spec)
spec.loader.exec_module(stand_in)
stand_in.ensure_mmcv_ops_importable()
import torch
from mmseg.apis import inference_model, init_model
model = init_model(sys.argv[2], sys.argv[3], device='cpu')
assert type(model.backbone).__name__ == 'TIMMBackbone', type(model.backbone)
torch.save(inference_model(model, sys.argv[4]).seg_logits.data, sys.argv[5])
"""


def test_merged_checkpoint_predicts_the_same_without_snella_seg(ade_root, trained_checkpoint, config_file, tmp_path):
    checkpoint, merged_config = merge_checkpoint(config_file, trained_checkpoint, str(tmp_path / 'merged'))
    assert 'snella' not in open(merged_config).read().lower()
    image = osp.join(ade_root, 'images', 'validation', 'ADE_val_00000001.jpg')
    original = inference_model(init_model(config_file, trained_checkpoint, device='cpu'), image)
    logits_path = str(tmp_path / 'merged_logits.pth')
    subprocess.run([sys.executable, '-c', WITHOUT_SNELLA_SEG, mmcv_lite.__file__, merged_config, checkpoint, image,
                    logits_path], check=True)
    merged_logits = torch.load(logits_path)
    assert torch.allclose(original.seg_logits.data, merged_logits, atol=1e-4)
    assert torch.equal(original.pred_sem_seg.data, merged_logits.argmax(0, keepdim=True))
    with pytest.raises(FileExistsError, match='nothing was written'):
        merge_checkpoint(config_file, trained_checkpoint, str(tmp_path / 'merged'))


def test_merged_sam_keeps_timm_vit_and_says_why(ade_root, config_file, tmp_path, capsys):
    cfg = Config.fromfile(config_file)
    cfg.model.backbone.backbone.arch = dict(family='sam', embed_dim=32, depth=4, num_heads=2, patch_size=8,
                                            window_size=2, global_attn_indexes=(1, 3))
    sam_config = str(tmp_path / 'sam.py')
    cfg.dump(sam_config)
    model = init_model(sam_config, None, device='cpu')
    with torch.no_grad():  # updates that change the output, as training makes them
        for name, param in model.backbone.named_parameters():
            if '.deltas.' in name and param.is_floating_point():
                param.add_(torch.randn_like(param) * 0.05)
    sam_checkpoint = str(tmp_path / 'sam.pth')
    torch.save({'state_dict': model.state_dict(), 'meta': {'dataset_meta': getattr(model, 'dataset_meta', None)}},
               sam_checkpoint)
    MMLogger.get_instance(f'merge:{tmp_path}')  # a logger whose console stream is this test's captured stdout
    capsys.readouterr()
    checkpoint, merged_config = merge_checkpoint(sam_config, sam_checkpoint, str(tmp_path / 'merged'))
    logged = capsys.readouterr().out
    assert 'eps 1e-5' in logged and "imports snella_seg for ['TimmViT']" in logged
    assert Config.fromfile(merged_config).custom_imports.imports == ['snella_seg']
    merged = init_model(merged_config, checkpoint, device='cpu')
    assert type(merged.backbone).__name__ == 'TimmViT'
    assert not any(isinstance(m, SNELLALinear) for m in merged.modules())
    image = osp.join(ade_root, 'images', 'validation', 'ADE_val_00000001.jpg')
    a, b = inference_model(model, image), inference_model(merged, image)
    assert not torch.allclose(a.seg_logits.data, inference_model(init_model(sam_config, None, device='cpu'),
                                                                  image).seg_logits.data, atol=1e-4)
    assert torch.allclose(a.seg_logits.data, b.seg_logits.data, atol=1e-4)


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


def test_merge_cfg_options_reach_the_merged_model_and_config(trained_checkpoint, config_file, tmp_path):
    with pytest.raises(ValueError, match='does not fit this backbone'):
        merge_checkpoint(config_file, trained_checkpoint, str(tmp_path / 'refused'),
                         cfg_options={'model.backbone.snella.rank': 8})
    _, merged_config = merge_checkpoint(Config.fromfile(config_file), trained_checkpoint, str(tmp_path / 'merged'),
                                        cfg_options={'model.test_cfg.mode': 'slide', 'model.test_cfg.stride': (32, 32),
                                                     'model.test_cfg.crop_size': (64, 64)})
    assert Config.fromfile(merged_config).model.test_cfg.mode == 'slide'


def test_merge_tool_takes_cfg_options(delta_checkpoint, tmp_path, monkeypatch):
    config, checkpoint = delta_checkpoint
    out_dir = tmp_path / 'deploy'
    run_tool(monkeypatch, 'merge_snella.py', config, checkpoint, str(out_dir), '--export-deltas',
             '--cfg-options', 'default_hooks.logger.interval=7')
    assert Config.fromfile(str(out_dir / 'merged_config.py')).default_hooks.logger.interval == 7
    assert (out_dir / 'snella_deltas.safetensors').is_file()


@pytest.mark.parametrize('script', ['merge_snella.py', 'demo.py'])
def test_tool_starts_and_offers_cfg_options(script):
    """In a fresh process: mmseg imports only after snella_seg where mmcv has no compiled ops."""
    shown = subprocess.run([sys.executable, osp.join(REPO, 'tools', script), '--help'], check=True,
                           capture_output=True, text=True).stdout
    assert '--cfg-options' in shown
