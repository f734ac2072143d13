"""merge_checkpoint: a merged checkpoint and config predict what the SNELLA model predicts, without snella_seg where
the backbone allows it."""
import os.path as osp
import subprocess
import sys

import pytest
import torch
from mmengine.config import Config
from mmengine.logging import MMLogger
from mmseg.apis import inference_model, init_model

from snella_seg.deploy import merge_checkpoint
from snella_seg.snella import SNELLALinear
from snella_seg.utils import mmcv_lite


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


def test_merge_cfg_options_reach_the_merged_model_and_config(trained_checkpoint, config_file, tmp_path):
    with pytest.raises(ValueError, match='does not fit this backbone'):
        merge_checkpoint(config_file, trained_checkpoint, str(tmp_path / 'refused'),
                         cfg_options={'model.backbone.snella.rank': 8})
    _, merged_config = merge_checkpoint(Config.fromfile(config_file), trained_checkpoint, str(tmp_path / 'merged'),
                                        cfg_options={'model.test_cfg.mode': 'slide', 'model.test_cfg.stride': (32, 32),
                                                     'model.test_cfg.crop_size': (64, 64)})
    assert Config.fromfile(merged_config).model.test_cfg.mode == 'slide'
