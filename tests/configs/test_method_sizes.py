"""configs/README.md's table of every method's trainable parameters and estimated GPU memory states them truly.

Every trainable count is recomputed from the config, built on the meta device (no weights, no computation); the
memory estimate, a fake-tensor run of two training steps, is recomputed for SNELLA and LoRA at ViT-B, whose ratio the
README's argument rests on. The estimates of the other rows come from the same function through
``tools/analysis/benchmark.py --methods all --estimate-memory`` (command in the README).
"""
import os
import os.path as osp
from typing import Dict, List

import pytest
import torch
from estimate_memory import estimate_training_memory
from mmengine.config import Config
from mmengine.registry import DefaultScope
from mmseg.registry import MODELS

import snella_seg  # noqa: F401  (registers the wrappers and methods the configs name)
from tests.helpers.paths import REPO

README = osp.join(REPO, 'configs', 'README.md')
SECTION = '## Trainable parameters and estimated memory'
BACKBONES = {'vit-b': 'ViT-B', 'vit-l': 'ViT-L', 'sam-b': 'SAM-B', 'sam-l': 'SAM-L'}
BATCH = 2


def config_path(method: str, backbone: str) -> str:
    name = f'snella_{backbone}_ade20k.py' if method == 'snella' else f'baselines/{method}_{backbone}_ade20k.py'
    return osp.join(REPO, 'configs', name)


def table_rows() -> Dict[str, Dict[str, str]]:
    """The section's table as {method: {column: cell}}."""
    text = open(README).read()
    assert SECTION in text, f'configs/README.md has no "{SECTION}" section'
    lines = [line for line in text.split(SECTION, 1)[1].split('\n## ', 1)[0].splitlines() if line.startswith('|')]
    header = [cell.strip() for cell in lines[0].strip('|').split('|')]
    rows = [[cell.strip() for cell in line.strip('|').split('|')] for line in lines[2:]]
    return {row[0].strip('`'): dict(zip(header, row)) for row in rows}


def shipped_methods() -> List[str]:
    """Every method with an ADE20K ViT-B config: SNELLA and each ``configs/baselines/<method>_vit-b_ade20k.py``."""
    folder = osp.join(REPO, 'configs', 'baselines')
    names = {name.split('_', 1)[0] for name in os.listdir(folder) if name.endswith('_vit-b_ade20k.py')}
    return ['snella', *sorted(names)]


def trainable_millions(path: str) -> str:
    cfg = Config.fromfile(path)
    with DefaultScope.overwrite_default_scope('mmseg'), torch.device('meta'):
        model = MODELS.build(cfg.model)
    return f'{sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6:.2f}M'


def test_every_method_with_a_config_has_a_row_and_every_row_a_config():
    assert sorted(table_rows()) == sorted(shipped_methods())


@pytest.mark.parametrize('backbone', list(BACKBONES))
def test_trainable_parameters_are_the_configs_own(backbone):
    stated, computed = {}, {}
    for method, row in table_rows().items():
        path = config_path(method, backbone)
        stated[method] = row[f'{BACKBONES[backbone]} trainable']
        computed[method] = trainable_millions(path) if osp.isfile(path) else '-'
    assert stated == computed, (f'configs/README.md: the {backbone} trainable counts differ from the configs; '
                                'update the table from the counts above')


def test_snella_and_lora_memory_estimates_at_vit_b_are_the_estimators():
    rows = table_rows()
    for method in ('snella', 'lora'):
        cfg = Config.fromfile(config_path(method, 'vit-b'))
        cfg.model.backbone.backbone.pretrained = None
        with DefaultScope.overwrite_default_scope('mmseg'):
            estimate = estimate_training_memory(cfg, batch=BATCH, allocator=method == 'snella')
        stated = int(rows[method]['ViT-B est. MB'].replace(',', ''))
        assert stated == round(estimate['peak_mb']), (
            f'configs/README.md states {stated} MB for {method} at ViT-B, the estimate is {estimate["peak_mb"]:.0f} '
            'MB: rerun the command in that section and update the table')
