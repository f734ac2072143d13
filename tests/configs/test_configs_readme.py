"""configs/README.md states each shipped config's head, method, schedule, crop, batch, data and metrics truly.

Short config names omit what mmseg's long names carry (head, schedule, crop, GPUs x batch); the README's table
carries it instead, so every cell is recomputed here from the config itself. Configs are only read, never built,
and without importing their ``custom_imports`` (snella_seg plays no part in what a config file says).
"""
import functools
import os.path as osp
import re

import pytest
from mmengine.config import Config

from tests.helpers.paths import REPO, SHIPPED_CONFIGS

SHIPPED = [osp.relpath(path, REPO) for path in SHIPPED_CONFIGS]
README = osp.join(REPO, 'configs', 'README.md')
COLUMNS = ('config', 'method', 'backbone', 'pretrained', 'neck + heads', 'schedule', 'crop', 'batch', 'dataset',
           'classes', 'metrics')
# the short name is <method>_<backbone>_<dataset>.py; these are its method and dataset tokens
METHOD_TOKENS = {'snella': 'SNELLA', 'snella-dense': 'SNELLA-dense', 'lora': 'LoRA', 'snell': 'SNELL',
                 'full': 'full', 'frozen': 'frozen', 'bitfit': 'BitFit', 'ln-tune': 'LN-Tune', 'partial': 'Partial-1',
                 'adapter': 'Adapter', 'adaptformer': 'AdaptFormer', 'ssf': 'SSF', 'vpt-deep': 'VPT-deep',
                 'mona': 'Mona', 'peft-lora': 'LoRA (peft)', 'dora': 'DoRA (peft)', 'adalora': 'AdaLoRA (peft)',
                 'loha': 'LoHa (peft)', 'lokr': 'LoKr (peft)'}
# PEFTBackbone's registered methods, and huggingface peft's config classes, as the table names them
PEFT_BACKBONE_METHODS = {'bitfit': 'BitFit', 'ln_tune': 'LN-Tune', 'adapter': 'Adapter', 'adaptformer': 'AdaptFormer',
                         'ssf': 'SSF', 'vpt_deep': 'VPT-deep', 'mona': 'Mona'}
PEFT_CONFIGS = {'LoraConfig': 'LoRA', 'AdaLoraConfig': 'AdaLoRA', 'LoHaConfig': 'LoHa', 'LoKrConfig': 'LoKr'}
WRAPPERS = ('SNELLABackbone', 'PEFTBackbone')
DATASET_TOKENS = {'ade20k': 'ADE20KDataset', 'demo-ade20k': 'ADE20KDataset',
                  'pascal-context-59': 'PascalContextDataset59', 'kvasir-seg': 'KvasirSEGDataset',
                  'my-dataset': 'BaseSegDataset'}
SHORT_NAME = re.compile(r'^(?P<method>[a-z-]+)_(?P<backbone>[a-z0-9-]+)_(?P<dataset>[a-z0-9-]+)\.py$')


@functools.cache
def load(relative_path: str) -> Config:
    return Config.fromfile(osp.join(REPO, relative_path), import_custom_modules=False)


def readme_rows() -> dict[str, dict[str, str]]:
    """The table rows of configs/README.md by config path, cells without backticks."""
    rows = {}
    with open(README, encoding='utf-8') as f:
        for line in f:
            if not line.startswith('| `configs/'):
                continue
            cells = [cell.strip().replace('`', '') for cell in line.strip().strip('|').split('|')]
            assert len(cells) == len(COLUMNS), (
                f'configs/README.md: a row has {len(cells)} cells where the header has {len(COLUMNS)}; fix: {line}')
            rows[cells[0]] = dict(zip(COLUMNS, cells))
    return rows


def inner_backbone(cfg: Config) -> dict:
    backbone = cfg.model.backbone
    return backbone.backbone if backbone.type in WRAPPERS else backbone


def peft_method_of(method: dict) -> str:
    if method.type == 'partial':
        return f'Partial-{method.k}'
    if method.type != 'peft':
        return PEFT_BACKBONE_METHODS[method.type]
    name = 'DoRA' if method.config.get('use_dora') else PEFT_CONFIGS[method.config.type]
    return f'{name} (peft)'


def method_of(cfg: Config) -> str:
    backbone = cfg.model.backbone
    if backbone.type == 'PEFTBackbone':
        return peft_method_of(backbone.method)
    if backbone.type != 'SNELLABackbone':
        return 'frozen' if backbone.get('frozen', False) else 'full'
    allocated = any(hook.type == 'SNELLAAllocatorHook' for hook in cfg.custom_hooks)
    kernel, sparsity = backbone.snella.kernel, backbone.snella.sparsity
    methods = {('snella', True, 0.0): 'SNELLA', ('snella', False, 0.0): 'SNELLA-dense',
               ('linear', False, 0.0): 'LoRA', ('snell', False, 0.7): 'SNELL'}
    return methods.get((kernel, allocated, sparsity),
                       f'kernel {kernel}, sparsity {sparsity}, allocator {"on" if allocated else "off"}')


def backbone_of(cfg: Config) -> str:
    arch = inner_backbone(cfg).arch
    if isinstance(arch, str):
        return arch
    return f'tiny {arch.family}: {arch.embed_dim}-d, {arch.depth} blocks, patch {arch.patch_size}'


def pretrained_of(cfg: Config) -> str:
    return inner_backbone(cfg).get('pretrained') or 'none (random init)'


def heads_of(cfg: Config) -> str:
    model = cfg.model
    neck = f'{model.neck.type} + ' if model.get('neck') else ''  # hierarchical encoders (SAM 2 Hiera) need none
    return f'{neck}{model.decode_head.type} + {model.auxiliary_head.type} aux'


def schedule_of(cfg: Config) -> str:
    iterations = cfg.train_cfg.max_iters
    return f'{iterations // 1000}k' if iterations % 1000 == 0 else str(iterations)


def crop_of(cfg: Config) -> str:
    padded = 'x'.join(map(str, cfg.model.data_preprocessor.size))
    crops = ['x'.join(map(str, t.crop_size)) for t in cfg.train_dataloader.dataset.pipeline if t.type == 'RandomCrop']
    return padded if crops == [padded] else f'preprocessor {padded}, RandomCrop {", ".join(crops) or "none"}'


def classes_of(cfg: Config) -> str:
    decode, auxiliary = cfg.model.decode_head.num_classes, cfg.model.auxiliary_head.num_classes
    return str(decode) if decode == auxiliary else f'decode {decode}, auxiliary {auxiliary}'


def metrics_of(cfg: Config) -> str:
    val, test = cfg.val_evaluator.iou_metrics, cfg.test_evaluator.iou_metrics
    return ', '.join(val) if val == test else f'val {", ".join(val)}, test {", ".join(test)}'


def row_of(relative_path: str) -> dict[str, str]:
    """The table row the config at ``relative_path`` calls for."""
    cfg = load(relative_path)
    return dict(config=relative_path, method=method_of(cfg), backbone=backbone_of(cfg), pretrained=pretrained_of(cfg),
                **{'neck + heads': heads_of(cfg)}, schedule=schedule_of(cfg), crop=crop_of(cfg),
                batch=f'{cfg.train_dataloader.batch_size} per GPU', dataset=cfg.train_dataloader.dataset.type,
                classes=classes_of(cfg), metrics=metrics_of(cfg))


def test_every_shipped_config_has_a_row_and_every_row_a_config():
    listed = set(readme_rows())
    assert set(SHIPPED) - listed == set(), 'configs without a row in configs/README.md'
    assert listed - set(SHIPPED) == set(), 'configs/README.md rows for configs that do not exist'


@pytest.mark.parametrize('relative_path', SHIPPED)
def test_readme_row_states_what_the_config_sets(relative_path):
    stated = readme_rows().get(relative_path)
    assert stated is not None, f'{relative_path} has no row in configs/README.md'
    assert stated == row_of(relative_path)


@pytest.mark.parametrize('relative_path', SHIPPED)
def test_short_name_states_the_configs_method_backbone_and_dataset(relative_path):
    name = SHORT_NAME.match(osp.basename(relative_path))
    assert name, f'{relative_path} does not follow <method>_<backbone>_<dataset>.py'
    cfg = load(relative_path)
    arch = inner_backbone(cfg).arch
    assert METHOD_TOKENS.get(name['method']) == method_of(cfg)
    assert name['backbone'] == (arch if isinstance(arch, str) else f'{arch.family}-tiny')
    assert DATASET_TOKENS.get(name['dataset']) == cfg.train_dataloader.dataset.type
