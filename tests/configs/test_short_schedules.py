"""Every shipped config survives ``--cfg-options train_cfg.max_iters=4``, the first thing a user tries.

Each config keeps its own schedule, hooks and optimizer (what is under test). For every config, its LR schedulers
and its allocator hook run the shortened schedule on their own (milliseconds). Configs that share a dataset layout,
schedule and hook list differ only in the model, which ``test_config_matrix`` builds at full size; one config of each
such group trains end to end in the real Runner, on a tiny encoder of its family and a few generated images in its
dataset's layout (a few seconds each).
"""
import copy
import functools
import os
import os.path as osp

import cv2
import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.runner import Runner
from mmseg.registry import HOOKS, PARAM_SCHEDULERS

from snella_seg.apis.runner import load_config
from snella_seg.datasets.demo_data import make_ade20k_like, make_pascal_context_like
from snella_seg.engine.hooks.allocator_hook import ALLOCATION_JSON, ALLOCATION_PLOT

from tests.helpers.allocator_hook import run_hook
from tests.helpers.paths import REPO, SHIPPED_CONFIGS
from tests.helpers.schedulers import learning_rates

MAX_ITERS = 4
SIZE = 32  # input pixels: a 4x4 token grid with patch size 8
WIDTH = 32
TINY_ARCHS = {
    'vit': dict(family='vit', embed_dim=WIDTH, depth=4, num_heads=2, patch_size=8),
    'sam': dict(family='sam', embed_dim=WIDTH, depth=4, num_heads=2, patch_size=8, window_size=2,
                global_attn_indexes=(1, 3)),
}
# one config per (dataset layout, schedule, hooks) group, covering both encoder families and a baseline
END_TO_END = [osp.join(REPO, 'configs', name) for name in (
    'demo/snella_vit-tiny_demo-ade20k.py', 'snella_vit-b_ade20k.py', 'snella_sam-b_pascal-context-59.py',
    'snella_sam-b_kvasir-seg.py', 'custom/snella_vit-b_my-dataset.py',
    'custom/snella_vit-tiny_my-dataset.py', 'baselines/snell_sam-b_ade20k.py', 'baselines/adalora_sam-b_ade20k.py')]
# dataset type -> fixture that writes a few images in that type's folder layout
DATA_FIXTURES = {'ADE20KDataset': 'ade_root', 'PascalContextDataset59': 'pascal_root',
                 'KvasirSEGDataset': 'kvasir_root', 'BaseSegDataset': 'custom_root'}


@pytest.fixture(scope='module')
def ade_root(tmp_path_factory):
    return make_ade20k_like(str(tmp_path_factory.mktemp('ade')), num_train=4, num_val=1, size=SIZE, seed=0)


@pytest.fixture(scope='module')
def pascal_root(tmp_path_factory):
    return make_pascal_context_like(str(tmp_path_factory.mktemp('pascal')), num_train=4, num_val=1, size=SIZE,
                                    seed=0)


@pytest.fixture(scope='module')
def custom_root(tmp_path_factory):
    """The custom template's layout: img_dir/{train,val}/*.jpg and ann_dir/{train,val}/*.png, ids 0-3 and 255."""
    root = tmp_path_factory.mktemp('custom')
    rng = np.random.default_rng(0)
    for split, count in (('train', 4), ('val', 1)):
        os.makedirs(root / 'img_dir' / split)
        os.makedirs(root / 'ann_dir' / split)
        for index in range(count):
            labels = rng.integers(0, 4, (SIZE // 8, SIZE // 8)).repeat(8, 0).repeat(8, 1).astype(np.uint8)
            labels[0, :] = 255
            image = (labels[..., None] * 60 + rng.integers(0, 30, (SIZE, SIZE, 3))).astype(np.uint8)
            cv2.imwrite(str(root / 'img_dir' / split / f'{index}.jpg'), image)
            cv2.imwrite(str(root / 'ann_dir' / split / f'{index}.png'), labels)
    return str(root)


def shrink_model(cfg) -> None:
    """A 4-block encoder of the config's family, no pretrained file, tiny neck and heads; classes unchanged."""
    backbone = cfg.model.backbone
    encoder = backbone.backbone if backbone.type in ('SNELLABackbone', 'PEFTBackbone') else backbone
    arch = encoder.arch if isinstance(encoder.arch, str) else encoder.arch['family']
    encoder.update(arch=TINY_ARCHS['sam' if arch.startswith('sam') else 'vit'], img_size=SIZE,
                   out_indices=(0, 1, 2, 3), pretrained=None)
    if backbone.type == 'SNELLABackbone':
        backbone.snella.rank = 4
    cfg.model.data_preprocessor.size = (SIZE, SIZE)
    cfg.model.neck.update(in_channels=[WIDTH] * 4, out_channels=WIDTH)
    cfg.model.decode_head.update(in_channels=[WIDTH] * 4, channels=16)
    cfg.model.auxiliary_head.update(in_channels=WIDTH, channels=16)
    cfg.model.test_cfg = dict(mode='whole')


def tiny_pipeline(pipeline: list) -> list:
    """The config's loading and packing transforms in their order, its resizing and augmentation replaced by one
    fixed resize to the tiny input (before the labels load where the config resizes before them, as for testing)."""
    kept = []
    for transform in pipeline:
        if transform['type'].startswith('Load') or transform['type'] == 'PackSegInputs':
            kept.append(transform)
        elif not any(t['type'] == 'Resize' for t in kept):
            kept.append(dict(type='Resize', scale=(SIZE, SIZE), keep_ratio=False))
    return kept


def point_data_at(cfg, data_root: str) -> None:
    """The config's own dataset and loading transforms on the generated images."""
    for name in ('train_dataloader', 'val_dataloader'):
        loader = cfg[name]
        loader.update(batch_size=2 if name == 'train_dataloader' else 1, num_workers=0, persistent_workers=False)
        loader.dataset.update(data_root=data_root, pipeline=tiny_pipeline(loader.dataset.pipeline))


@functools.lru_cache(maxsize=None)
def _shortened(path: str) -> Config:
    return load_config(path, work_dir='unused', cfg_options={'train_cfg.max_iters': MAX_ITERS})


def shortened_config(path: str, work_dir: str) -> Config:
    """``path`` as ``tools/train.py path --cfg-options train_cfg.max_iters=4`` reads it."""
    cfg = copy.deepcopy(_shortened(path))
    cfg.work_dir = work_dir
    return cfg


def schedule_group(path: str) -> tuple:
    cfg = _shortened(path)
    return cfg.train_dataloader.dataset.type, repr(cfg.param_scheduler), repr(cfg.custom_hooks), repr(cfg.train_cfg)


def ids(path: str) -> str:
    return osp.relpath(path, REPO)


@pytest.mark.parametrize('path', SHIPPED_CONFIGS, ids=ids)
def test_learning_rate_warms_up_and_decays_within_a_shortened_run(path, tmp_path):
    cfg = shortened_config(path, str(tmp_path))
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.optim_wrapper.optimizer.lr)
    # as mmengine's Runner builds them: a scheduler that leaves out `end` ends at train_cfg.max_iters
    schedulers = [PARAM_SCHEDULERS.build(dict(scheduler, end=scheduler.get('end', MAX_ITERS)),
                                         default_args=dict(optimizer=optimizer)) for scheduler in cfg.param_scheduler]
    rates = [group_rates[0] for group_rates in learning_rates(optimizer, schedulers, MAX_ITERS)]
    assert rates[0] == pytest.approx(cfg.optim_wrapper.optimizer.lr)
    assert rates[-1] == pytest.approx(schedulers[-1].eta_min)


@pytest.mark.parametrize('path', SHIPPED_CONFIGS, ids=ids)
def test_allocator_reaches_its_target_within_a_shortened_run(path, tmp_path):
    hooks = [h for h in shortened_config(path, str(tmp_path)).custom_hooks if h.type == 'SNELLAAllocatorHook']
    if not hooks:
        pytest.skip('a baseline without the allocator')
    hook = HOOKS.build(dict(hooks[0], plot=False))
    runner = run_hook(hook, tmp_path, iterations=MAX_ITERS)
    hook.after_train(runner)  # would fail a run whose allocator never reallocated
    assert hook.allocator.reallocations > 0
    assert hook.allocator.overall_sparsity() == pytest.approx(hook.allocator.target_ratio, abs=1e-3)


def test_every_config_shares_layout_schedule_and_hooks_with_one_that_trains_end_to_end():
    trained = {schedule_group(path) for path in END_TO_END}
    assert [ids(path) for path in SHIPPED_CONFIGS if schedule_group(path) not in trained] == []


@pytest.mark.parametrize('path', END_TO_END, ids=ids)
def test_config_trains_a_shortened_schedule_end_to_end(path, request, tmp_path):
    cfg = shortened_config(path, str(tmp_path))
    shrink_model(cfg)
    point_data_at(cfg, request.getfixturevalue(DATA_FIXTURES[cfg.train_dataloader.dataset.type]))
    cfg.visualizer.name = f'visualizer:{tmp_path}'  # visualizers are per-process singletons by name
    cfg.randomness = dict(seed=0)
    runner = Runner.from_cfg(cfg)
    runner.train()
    assert runner.iter == MAX_ITERS
    # the LR schedule follows max_iters: warm-up done by the first iteration, decayed to eta_min by the last
    rates = list(runner.message_hub.get_scalar('train/lr').data[0])
    assert rates[0] == pytest.approx(runner.optim_wrapper.param_groups[0]['initial_lr'])
    assert rates[-1] == pytest.approx(runner.param_schedulers[-1].eta_min)
    for hook in (h for h in runner.hooks if type(h).__name__ == 'SNELLAAllocatorHook'):
        assert hook.allocator.reallocations > 0
        assert hook.allocator.overall_sparsity() == pytest.approx(hook.allocator.target_ratio, abs=1e-3)
        assert osp.isfile(osp.join(str(tmp_path), ALLOCATION_JSON))
        assert osp.isfile(osp.join(str(tmp_path), ALLOCATION_PLOT))
