"""Shared set-up for tests that run the real mmengine Runner on a tiny ViT and generated data."""
import copy
import os
import os.path as osp
import socket
import subprocess
import sys

import pytest
from mmengine.config import Config

import snella_seg  # noqa: F401
from snella_seg.datasets.demo_data import make_ade20k_like, make_pascal_context_like

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
DEMO_CONFIG = osp.join(REPO, 'configs', 'demo', 'snella_vit-tiny_demo-ade20k.py')


@pytest.fixture(scope='session')
def ade_root(tmp_path_factory):
    return make_ade20k_like(str(tmp_path_factory.mktemp('ade')), num_train=8, num_val=4, size=64, seed=0)


@pytest.fixture(scope='session')
def trained_checkpoint(ade_root, tmp_path_factory):
    """A checkpoint of a 2-iteration tiny run, for tests that only need something to load."""
    from mmengine.runner import Runner
    work_dir = str(tmp_path_factory.mktemp('trained'))
    Runner.from_cfg(tiny_config(ade_root, work_dir, max_iters=2, checkpoint_interval=2)).train()
    return osp.join(work_dir, 'iter_2.pth')


@pytest.fixture(scope='session')
def pascal_root(tmp_path_factory):
    return make_pascal_context_like(str(tmp_path_factory.mktemp('pascal')), num_train=8, num_val=4, size=64,
                                    seed=0)


def tiny_config(data_root: str, work_dir: str, max_iters: int = 6, checkpoint_interval: int = 3) -> Config:
    """The demo config shrunk to seconds: 64x64 inputs, a 4-block ViT of width 32, fixed pipeline, no dropout."""
    cfg = Config.fromfile(DEMO_CONFIG)
    cfg.work_dir = work_dir
    cfg.visualizer.name = f'visualizer:{work_dir}'  # visualizers are per-process singletons by name
    cfg.train_dataloader.dataset.data_root = data_root
    cfg.val_dataloader.dataset.data_root = data_root
    cfg.test_dataloader = copy.deepcopy(cfg.val_dataloader)
    cfg.train_dataloader.batch_size = 2
    deterministic = [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations', reduce_zero_label=True),
                     dict(type='Resize', scale=(64, 64), keep_ratio=False), dict(type='PackSegInputs')]
    cfg.train_dataloader.dataset.pipeline = deterministic
    cfg.model.data_preprocessor.size = (64, 64)
    vit = cfg.model.backbone.backbone
    vit.img_size = 64
    vit.arch.embed_dim = 32
    cfg.model.neck.in_channels, cfg.model.neck.out_channels = [32] * 4, 32
    cfg.model.decode_head.update(in_channels=[32] * 4, channels=16, dropout_ratio=0.0)
    cfg.model.auxiliary_head.update(in_channels=32, channels=16, dropout_ratio=0.0)
    cfg.model.backbone.snella.rank = 4
    cfg.train_cfg.max_iters = max_iters
    cfg.train_cfg.val_interval = max_iters
    cfg.param_scheduler = [dict(type='PolyLR', eta_min=0.0, power=1.0, begin=0, end=max_iters, by_epoch=False)]
    cfg.default_hooks.checkpoint.update(interval=checkpoint_interval, max_keep_ckpts=-1)
    cfg.default_hooks.logger.interval = 1
    cfg.custom_hooks = [dict(type='SNELLAAllocatorHook', target_ratio=0.6, init_warmup=1,
                             final_warmup=max(0, min(2, max_iters - 2)),
                             mask_interval=1, log_interval=1),
                        dict(type='FiniteTrainingHook'), dict(type='ResumeCompatibilityHook')]
    return cfg



def realistic_tiny_config(data_root: str, work_dir: str, max_iters: int = 6, checkpoint_interval: int = 3) -> Config:
    """tiny_config with the randomness of the shipped configs: the demo's heads (dropout 0.1), stochastic depth in
    the ViT and SNELLA's own dropout and drop path, random resize/crop/flip and photometric distortion, validation
    at every checkpoint, and RNGStateHook. Crops stay multiples of the ViT's patch (8)."""
    cfg = tiny_config(data_root, work_dir, max_iters, checkpoint_interval)
    demo = Config.fromfile(DEMO_CONFIG)
    cfg.model.decode_head.dropout_ratio = demo.model.decode_head.dropout_ratio
    cfg.model.auxiliary_head.dropout_ratio = demo.model.auxiliary_head.dropout_ratio
    cfg.model.backbone.backbone.drop_path_rate = 0.2
    cfg.model.backbone.snella.update(dropout=0.1, drop_path=0.1)
    cfg.train_dataloader.dataset.pipeline = [
        dict(type='LoadImageFromFile'), dict(type='LoadAnnotations', reduce_zero_label=True),
        dict(type='RandomResize', scale=(64, 64), ratio_range=(1.0, 1.5), keep_ratio=True),
        dict(type='RandomCrop', crop_size=(64, 64), cat_max_ratio=0.75), dict(type='RandomFlip', prob=0.5),
        dict(type='PhotoMetricDistortion'), dict(type='PackSegInputs')]
    cfg.train_cfg.val_interval = checkpoint_interval
    cfg.custom_hooks.append(dict(type='RNGStateHook'))
    return cfg


def dist_train(config: str, work_dir: str, *options: str) -> subprocess.CompletedProcess:
    """``bash tools/dist_train.sh CONFIG 2`` on CPU (gloo), one thread per process, on a free port."""
    with socket.socket() as probe:
        probe.bind(('127.0.0.1', 0))
        port = probe.getsockname()[1]
    env = dict(os.environ, PYTHON=sys.executable, PYTHONPATH=REPO, PORT=str(port), OMP_NUM_THREADS='1',
               CUDA_VISIBLE_DEVICES='')
    return subprocess.run(['bash', osp.join(REPO, 'tools', 'dist_train.sh'), config, '2', '--work-dir', work_dir,
                           *options], env=env, capture_output=True, text=True, timeout=600)


def failure_report(result: subprocess.CompletedProcess) -> str:
    return f'exit code {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}'

@pytest.fixture(scope='session')
def kvasir_root(tmp_path_factory):
    """Kvasir-SEG layout: JPEG images and noisy 3-channel JPEG masks (a bright disc is the 'polyp')."""
    import cv2
    import numpy as np
    root = tmp_path_factory.mktemp('kvasir')
    (root / 'images').mkdir()
    (root / 'masks').mkdir()
    rng = np.random.default_rng(0)
    ids = [f'cju{i:04d}' for i in range(8)]
    for name in ids:
        image = rng.integers(60, 120, (64, 64, 3), dtype=np.uint8)
        mask = np.zeros((64, 64, 3), np.uint8)
        centre, radius = tuple(int(v) for v in rng.integers(16, 48, 2)), int(rng.integers(6, 14))
        cv2.circle(image, centre, radius, (40, 40, 200), -1)
        cv2.circle(mask, centre, radius, (255, 255, 255), -1)
        cv2.imwrite(str(root / 'images' / f'{name}.jpg'), image)
        cv2.imwrite(str(root / 'masks' / f'{name}.jpg'), mask)
    (root / 'train.txt').write_text('\n'.join(ids[:6]) + '\n')
    (root / 'val.txt').write_text('\n'.join(ids[6:]) + '\n')
    return str(root)
