"""PEFTBackbone: every method of ``snella_seg.methods`` through the repository's tools on generated data, on a tiny
pretrained ViT (and a tiny SAM where the method applies): train, resume bit-exactly, test, predict, and merge to
equal predictions or be refused saying why; delta-only checkpoints, and only the method's tensors and the heads in
the optimizer."""
import copy
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from mmseg.apis import inference_model, init_model
from mmseg.registry import MODELS

from snella_seg.deploy import merge_checkpoint
from snella_seg.engine.hooks.adalora_hook import CHECKPOINT_KEY as ADALORA_KEY
from snella_seg.engine.optimizers import SNELLAOptimWrapperConstructor
from snella_seg.methods import METHODS, NotMergeableError
from snella_seg.models import PEFTBackbone
from snella_seg.models.snella_backbone import FINGERPRINT_KEY
from snella_seg.utils.checkpoint_loading import load_checkpoint_safely

from tests.helpers.configs import tiny_config
from tests.helpers.peft_configs import peft_configs
from tests.helpers.tools import run_tool

OPTIONS = {'partial': dict(k=1), 'adapter': dict(bottleneck=4), 'adaptformer': dict(bottleneck=4),
           'vpt_deep': dict(num_tokens=2), 'mona': dict(bottleneck=4), 'ssf': dict(init_std=0.02)}
SAM = dict(family='sam', embed_dim=32, depth=4, num_heads=2, patch_size=8, window_size=2, global_attn_indexes=(1, 3))
MAX_ITERS, CHECKPOINT_INTERVAL = 4, 2
PEFT_CONFIGS = peft_configs(total_steps=MAX_ITERS)
METHOD_CONFIGS = {**{method: dict(type=method, **OPTIONS.get(method, {})) for method in METHODS},
                  **{name: dict(type='peft', config=config) for name, config in PEFT_CONFIGS.items()}}
CASES = [(method, arch) for method in sorted(METHOD_CONFIGS) for arch in ('vit', 'sam')
         if (method, arch) != ('vpt_deep', 'sam')]  # SAM's grid blocks refuse prompts (tests/methods)


def method_config(data_root: str, folder, method: str, arch: str) -> Config:
    """The tiny config on a pretrained ViT or SAM base, trained through ``method``."""
    cfg = tiny_config(data_root, str(folder / 'work'), max_iters=MAX_ITERS, checkpoint_interval=CHECKPOINT_INTERVAL)
    inner = cfg.model.backbone.backbone
    if arch == 'sam':
        inner.arch = copy.deepcopy(SAM)
    torch.manual_seed(1)
    pretrained = str(folder / f'{arch}.pth')
    torch.save(MODELS.build(copy.deepcopy(inner)).model.state_dict(), pretrained)
    inner.pretrained = pretrained
    cfg.model.backbone = dict(type='PEFTBackbone', backbone=inner, method=METHOD_CONFIGS[method])
    cfg.custom_hooks = [hook for hook in cfg.custom_hooks if hook['type'] != 'SNELLAAllocatorHook']
    if method == 'adalora':
        cfg.custom_hooks.append(dict(type='AdaLoRAHook'))
    cfg.custom_hooks.append(dict(type='RNGStateHook'))
    cfg.train_cfg.val_interval = MAX_ITERS + 1  # tools/test.py evaluates
    return cfg


def test_an_unknown_method_is_refused_naming_the_registered_ones(ade_root, tmp_path):
    inner = tiny_config(ade_root, str(tmp_path)).model.backbone.backbone
    with pytest.raises(ValueError, match="unknown method 'lora2'.*'bitfit'"):
        PEFTBackbone(backbone=inner, method=dict(type='lora2'))


@pytest.fixture(autouse=True)
def unformatted_config_text(monkeypatch):
    """Config text as mmengine writes it before yapf, which spends seconds on each config the Runner logs."""
    monkeypatch.setattr('mmengine.config.config.FormatCode', lambda text, **options: (text, None))


def train_and_resume(config: str, work, monkeypatch) -> dict:
    """Train through tools/train.py, resume from the middle checkpoint and return the final checkpoint after
    checking that it equals the uninterrupted run's, tensor for tensor (model and optimizer)."""
    run_tool(monkeypatch, 'train.py', config, '--work-dir', str(work))
    final = str(work / f'iter_{MAX_ITERS}.pth')
    uninterrupted = load_checkpoint_safely(final)
    (work / 'last_checkpoint').write_text(str(work / f'iter_{CHECKPOINT_INTERVAL}.pth'))
    run_tool(monkeypatch, 'train.py', config, '--work-dir', str(work), '--resume')
    resumed = load_checkpoint_safely(final)
    assert uninterrupted['state_dict'].keys() == resumed['state_dict'].keys()
    for key, tensor in uninterrupted['state_dict'].items():
        assert torch.equal(tensor, resumed['state_dict'][key]), key
    assert uninterrupted['optimizer']['state'].keys() == resumed['optimizer']['state'].keys()
    for index, state in uninterrupted['optimizer']['state'].items():
        for name, value in state.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(resumed['optimizer']['state'][index][name]))
    return uninterrupted


@pytest.mark.parametrize('method, arch', CASES)
def test_every_method_trains_resumes_bit_exactly_and_merges_or_refuses(method, arch, ade_root, tmp_path,
                                                                       monkeypatch):
    config = str(tmp_path / 'config.py')
    method_config(ade_root, tmp_path, method, arch).dump(config)
    checkpoint = train_and_resume(config, tmp_path / 'work', monkeypatch)
    final = str(tmp_path / 'work' / f'iter_{MAX_ITERS}.pth')

    model = init_model(config, final, device='cpu')
    update_keys = {f'backbone.backbone.{key}' for key in model.backbone._update_keys}
    assert {f'backbone.backbone.{key}' for key in model.backbone.report.trainable} <= update_keys
    saved_backbone_keys = {k for k in checkpoint['state_dict'] if k.startswith('backbone.')}
    assert saved_backbone_keys == update_keys | {f'backbone.{FINGERPRINT_KEY}'}  # delta-only, with the fingerprint

    if method == 'adalora':  # the hook allocated the final budget: target_r ranks per layer on average
        kept = sum(sum(ranks) for ranks in checkpoint[ADALORA_KEY]['rank_pattern'].values())
        assert kept == PEFT_CONFIGS['adalora']['target_r'] * len(checkpoint[ADALORA_KEY]['rank_pattern']) == sum(
            int(tensor.count_nonzero()) for key, tensor in checkpoint['state_dict'].items() if '.lora_E.' in key)

    image = osp.join(ade_root, 'images', 'validation', 'ADE_val_00000001.jpg')
    original = inference_model(model, image)
    if method not in PEFT_CONFIGS and not METHODS[method].mergeable:
        with pytest.raises(NotMergeableError, match=f'{method} cannot be merged'):
            merge_checkpoint(config, final, str(tmp_path / 'merged'))
        assert not osp.exists(tmp_path / 'merged')
        return
    checkpoint_path, merged_config = merge_checkpoint(config, final, str(tmp_path / 'merged'))
    merged = init_model(merged_config, checkpoint_path, device='cpu')
    assert not isinstance(merged.backbone, PEFTBackbone)
    assert torch.allclose(original.seg_logits.data, inference_model(merged, image).seg_logits.data, atol=1e-4)


@pytest.mark.parametrize('method', ['ssf', 'mona'])
def test_test_demo_and_merge_tools_take_a_method_checkpoint(method, ade_root, tmp_path, monkeypatch, capsys):
    config = str(tmp_path / 'config.py')
    cfg = method_config(ade_root, tmp_path, method, 'vit')
    cfg.train_cfg.max_iters = CHECKPOINT_INTERVAL
    cfg.dump(config)
    run_tool(monkeypatch, 'train.py', config, '--work-dir', str(tmp_path / 'work'))
    checkpoint = str(tmp_path / 'work' / f'iter_{CHECKPOINT_INTERVAL}.pth')
    run_tool(monkeypatch, 'test.py', config, checkpoint, '--work-dir', str(tmp_path / 'test'))
    assert 'mIoU' in capsys.readouterr().out + open(next((tmp_path / 'test').rglob('*.log'))).read()
    image = osp.join(ade_root, 'images', 'validation', 'ADE_val_00000001.jpg')
    run_tool(monkeypatch, 'demo.py', config, checkpoint, image, '--out-dir', str(tmp_path / 'demo'))
    assert len(list((tmp_path / 'demo').iterdir())) == 1
    if METHODS[method].mergeable:
        run_tool(monkeypatch, 'merge_snella.py', config, checkpoint, str(tmp_path / 'merged'))
        assert (tmp_path / 'merged' / 'merged.pth').is_file()
    else:
        with pytest.raises(SystemExit) as exit_info:
            run_tool(monkeypatch, 'merge_snella.py', config, checkpoint, str(tmp_path / 'merged'))
        assert exit_info.value.code == 2
        assert 'mona cannot be merged' in capsys.readouterr().err


@pytest.mark.parametrize('method', ['mona', 'dora', 'adalora'])
def test_methods_train_under_amp(method, ade_root, tmp_path, monkeypatch):
    config = str(tmp_path / 'config.py')
    cfg = method_config(ade_root, tmp_path, method, 'vit')
    cfg.train_cfg.max_iters = CHECKPOINT_INTERVAL
    cfg.dump(config)
    run_tool(monkeypatch, 'train.py', config, '--work-dir', str(tmp_path / 'work'), '--amp')
    state = load_checkpoint_safely(str(tmp_path / 'work' / f'iter_{CHECKPOINT_INTERVAL}.pth'))['state_dict']
    assert all(tensor.isfinite().all() for tensor in state.values() if tensor.is_floating_point())


@pytest.mark.parametrize('method', ['bitfit', 'adapter'])
def test_only_the_methods_tensors_and_the_heads_reach_the_optimizer(method, ade_root, tmp_path):
    cfg = method_config(ade_root, tmp_path, method, 'vit')
    cfg.dump(str(tmp_path / 'config.py'))
    model = init_model(str(tmp_path / 'config.py'), None, device='cpu')
    optimizer = dict(type='AdamW', lr=1e-3, weight_decay=0.01)
    optim_wrapper = SNELLAOptimWrapperConstructor(dict(type='OptimWrapper', optimizer=optimizer),
                                                  cfg.optim_wrapper.get('paramwise_cfg'))(model)
    in_optimizer = {id(p) for group in optim_wrapper.optimizer.param_groups for p in group['params']}
    expected = {f'backbone.backbone.{name}' for name in model.backbone.report.trainable}
    expected |= {name for name, _ in model.named_parameters() if not name.startswith('backbone.')}
    assert {name for name, p in model.named_parameters() if id(p) in in_optimizer} == expected


@pytest.mark.parametrize('method', sorted(PEFT_CONFIGS))
def test_peft_methods_start_as_the_pretrained_encoder(method, ade_root, tmp_path):
    """peft derives some tensors from the base weights (DoRA's magnitudes): they must come from the pretrained ones,
    which load after the injection."""
    cfg = method_config(ade_root, tmp_path, method, 'vit')
    adapted = MODELS.build(cfg.model.backbone)
    adapted.init_weights()
    plain = MODELS.build(cfg.model.backbone.backbone)
    plain.init_weights()
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for ours, theirs in zip(adapted.eval()(images), plain.eval()(images)):
            assert torch.allclose(ours, theirs, atol=1e-5)


def test_a_checkpoint_on_another_base_is_refused(ade_root, tmp_path):
    cfg = method_config(ade_root, tmp_path, 'adapter', 'vit')
    config = str(tmp_path / 'config.py')
    cfg.dump(config)
    model = init_model(config, None, device='cpu')
    model.init_weights()
    state = model.state_dict()
    torch.manual_seed(2)
    other = MODELS.build(copy.deepcopy(cfg.model.backbone.backbone))
    torch.save(other.model.state_dict(), cfg.model.backbone.backbone.pretrained)
    with pytest.raises(ValueError, match='adapter updates in this checkpoint were trained on'):
        init_model(config, None, device='cpu').load_state_dict(state)
