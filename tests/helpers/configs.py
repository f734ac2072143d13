"""Configs for tests: the demo config shrunk to seconds, with or without the shipped configs' randomness, on a
pretrained base, or laid out with baselines as configs/ is."""
import copy

import torch
from mmengine.config import Config
from mmseg.registry import MODELS

import snella_seg  # noqa: F401  (registers the components the configs name)

from .paths import DEMO_CONFIG


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


def save_tiny_vit(path, seed: int) -> str:
    """A pretrained file for ``tiny_config``'s ViT; files of other seeds have the same shapes, other weights."""
    torch.manual_seed(seed)
    vit = copy.deepcopy(tiny_config('unused', 'unused').model.backbone.backbone)
    torch.save(MODELS.build(vit).model.state_dict(), path)
    return str(path)


def pretrained_config(data_root: str, work_dir: str, pretrained: str, **kwargs) -> Config:
    """``tiny_config`` on a pretrained base: its checkpoints are delta-only (``save='auto'``)."""
    cfg = tiny_config(data_root, work_dir, **kwargs)
    cfg.model.backbone.backbone.pretrained = pretrained
    return cfg


TINY_BASELINES = {
    'lora': "model = dict(backbone=dict(snella=dict(kernel='linear')))",
    'snell': "model = dict(backbone=dict(snella=dict(kernel='snell', sparsity=0.7)))",
    'full': 'model = dict(backbone=dict(_delete_=True, **{inner}))',
    'frozen': 'model = dict(backbone=dict(_delete_=True, frozen=True, **{inner}))',
}


def tiny_config_with_baselines(ade_root: str, folder) -> str:
    """The tiny config as ``snella_tiny.py`` with its baselines in ``baselines/``, laid out as configs/ is."""
    cfg = tiny_config(ade_root, str(folder / 'work'))
    config = folder / 'snella_tiny.py'
    cfg.dump(str(config))
    (folder / 'baselines').mkdir()
    inner = cfg.model.backbone.backbone.to_dict()
    for method, body in TINY_BASELINES.items():
        text = f"_base_ = '../snella_tiny.py'\n{body.format(inner=inner)}\n"
        (folder / 'baselines' / f'{method}_tiny.py').write_text(text)
    return str(config)
