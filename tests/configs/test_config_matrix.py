"""Every shipped config builds its full-size model, and the README's model-zoo table states its true sizes.

Models are built on the ``meta`` device: real architectures and parameter counts, no memory, no weights.
"""
import os.path as osp
import re

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmseg.registry import MODELS

import snella_seg  # noqa: F401

from tests.helpers.paths import REPO, SHIPPED_CONFIGS

ROW = re.compile(r'^\| `(configs/[^`]+\.py)` \| ([\d.]+)M \| ([\d.]+)M \| ([\d.]+)M \|')


def readme_rows():
    with open(osp.join(REPO, 'README.md'), encoding='utf-8') as f:
        return {m.group(1): tuple(float(g) for g in m.groups()[1:]) for m in map(ROW.match, f) if m}


def test_every_config_is_in_the_readme_model_zoo():
    listed = set(readme_rows())
    shipped = {osp.relpath(p, REPO) for p in SHIPPED_CONFIGS}
    assert shipped - listed == set(), 'configs missing from the README model zoo'
    assert listed - shipped == set(), 'README lists configs that do not exist'


@pytest.mark.parametrize('path', SHIPPED_CONFIGS, ids=lambda p: osp.relpath(p, REPO))
def test_config_builds_with_the_parameter_counts_the_readme_states(path):
    init_default_scope('mmseg')
    cfg = Config.fromfile(path)
    with torch.device('meta'):
        model = MODELS.build(cfg.model)
    backbone = list(model.backbone.parameters())
    frozen = sum(p.numel() for p in backbone if not p.requires_grad) / 1e6
    adapted = sum(p.numel() for p in backbone if p.requires_grad) / 1e6
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6
    stated = readme_rows()[osp.relpath(path, REPO)]
    assert (round(frozen, 2), round(adapted, 2), round(trainable, 2)) == stated
