"""SNELLAOptimWrapperConstructor: the optimizer holds exactly the trainable parameters, without decay on scalars, in
one group per distinct setting that trains exactly as one group per tensor did, and resumes the old layout."""
import copy
import io
import os.path as osp
from typing import List

import pytest
import torch
from mmengine.config import Config
from mmengine.optim import OptimWrapper, build_optim_wrapper
from mmengine.registry import init_default_scope
from mmengine.runner import Runner
from mmseg.registry import MODELS, OPTIM_WRAPPER_CONSTRUCTORS
from torch import nn

from snella_seg.engine.optimizers.snella_optim_wrapper_constructor import (SNELLAOptimWrapperConstructor,
                                                                           merge_per_tensor_checkpoint)
from snella_seg.utils.checkpoint_loading import load_checkpoint_safely
from snella_seg.engine.schedulers.warmup_poly_lr import WarmupPolyLR

from tests.helpers.configs import tiny_config
from tests.helpers.log_capture import log_from_here
from tests.helpers.paths import REPO
from tests.helpers.tiny_backbone import build

SHIPPED_CUSTOM_KEYS = {'.deltas.': dict(lr_mult=1.0), 'decode_head': dict(lr_mult=1.0)}  # _base_/schedules
DISTINCT_CUSTOM_KEYS = {'.deltas.': dict(lr_mult=1.0), 'decode_head': dict(lr_mult=10.0)}
VIT_L_GROUPS, VIT_L_TENSORS = 4, 779
STEPS = 6


class TinySegmentor(nn.Module):
    """A SNELLA backbone and two heads with convolutions, norms and biases, as the shipped segmentors have."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = build()
        self.decode_head = nn.Sequential(nn.Conv2d(16, 8, 1), nn.BatchNorm2d(8), nn.Conv2d(8, 4, 1))
        self.auxiliary_head = nn.Sequential(nn.Conv2d(16, 4, 1), nn.BatchNorm2d(4))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.backbone(images)[0]
        return self.decode_head(features) + self.auxiliary_head(features)


def optim_wrapper_cfg(custom_keys: dict, foreach: bool = False) -> dict:
    return dict(type='OptimWrapper', constructor='SNELLAOptimWrapperConstructor',
                optimizer=dict(type='AdamW', lr=1e-2, betas=(0.9, 0.999), weight_decay=0.05, foreach=foreach),
                paramwise_cfg=dict(custom_keys=custom_keys))


def merged(model: nn.Module, custom_keys: dict = DISTINCT_CUSTOM_KEYS, foreach: bool = False) -> OptimWrapper:
    init_default_scope('mmseg')
    return build_optim_wrapper(model, optim_wrapper_cfg(custom_keys, foreach))


@OPTIM_WRAPPER_CONSTRUCTORS.register_module(force=True)
class PerTensorTestConstructor(SNELLAOptimWrapperConstructor):
    """The layout before groups were merged: the same settings, one group per trainable tensor in module order."""

    def add_params(self, params: List[dict], module: nn.Module, prefix: str = '', **kwargs) -> None:
        if prefix:
            return super().add_params(params, module, prefix, **kwargs)
        groups: List[dict] = []
        super().add_params(groups, module, prefix, **kwargs)
        settings = {id(p): {k: v for k, v in group.items() if k != 'params'}
                    for group in groups for p in group['params']}
        params.extend(dict(settings[id(p)], params=[p]) for p in module.parameters() if id(p) in settings)


def per_tensor(model: nn.Module, custom_keys: dict = DISTINCT_CUSTOM_KEYS, foreach: bool = False) -> OptimWrapper:
    cfg = dict(optim_wrapper_cfg(custom_keys, foreach), constructor='PerTensorTestConstructor')
    return build_optim_wrapper(model, cfg)


def scheduler(optim_wrapper: OptimWrapper) -> WarmupPolyLR:
    return WarmupPolyLR(optim_wrapper, warmup=2, start_factor=0.1, end=STEPS)


def train(model: nn.Module, optim_wrapper: OptimWrapper, schedule: WarmupPolyLR, first: int, last: int) -> None:
    """Steps ``first`` to ``last - 1``; each step's batch depends on its index only, so a resumed run sees the same."""
    for step in range(first, last):
        images = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(step))
        optim_wrapper.update_params(model(images).square().mean())
        schedule.step()


def trainable(model: nn.Module) -> List[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters() if p.requires_grad]


def saved(obj):
    """What torch.save then torch.load give back, as a checkpoint on disk would."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


def test_optimizer_holds_exactly_trainable_parameters_and_no_decay_on_scalars():
    model = TinySegmentor()
    wrapper = merged(model)
    in_optimizer = [p for g in wrapper.optimizer.param_groups for p in g['params']]
    trainable_params = [p for p in model.parameters() if p.requires_grad]
    assert {id(p) for p in in_optimizer} == {id(p) for p in trainable_params}
    assert len(in_optimizer) == len(trainable_params)
    by_id = {id(p): g for g in wrapper.optimizer.param_groups for p in g['params']}
    delta = model.backbone.backbone.blocks[0].mlp.fc1.deltas[0]
    assert by_id[id(delta.alpha)]['weight_decay'] == 0.0
    assert by_id[id(delta.in_factors)]['weight_decay'] == 0.05
    assert by_id[id(model.decode_head[0].weight)]['lr'] == pytest.approx(1e-1)
    assert by_id[id(model.decode_head[0].bias)]['weight_decay'] == 0.0


def test_tensors_with_the_shipped_settings_share_four_groups_in_order_of_first_appearance():
    groups = merged(TinySegmentor(), SHIPPED_CUSTOM_KEYS).optimizer.param_groups
    # factors and head weights, then kernel scalars and head norms/biases (both by custom key), then the
    # auxiliary head's weights and its norms/biases (no custom key: the optimizer's defaults)
    assert [(g['lr'], g['weight_decay'], g.get('lr_mult')) for g in groups] == [
        (1e-2, 0.05, 1.0), (1e-2, 0.0, 1.0), (1e-2, 0.05, None), (1e-2, 0.0, None)]


def test_a_distinct_lr_mult_gives_its_tensors_groups_of_their_own():
    groups = merged(TinySegmentor(), DISTINCT_CUSTOM_KEYS).optimizer.param_groups
    assert [(g['lr'], g['weight_decay']) for g in groups] == [
        (1e-2, 0.05), (1e-2, 0.0), (1e-1, 0.05), (1e-1, 0.0), (1e-2, 0.05), (1e-2, 0.0)]


@pytest.mark.parametrize('foreach', [False, True])
def test_merged_groups_train_exactly_as_one_group_per_tensor(foreach):
    torch.manual_seed(0)
    model_merged = TinySegmentor()
    model_per_tensor = copy.deepcopy(model_merged)
    wrapper_merged = merged(model_merged, foreach=foreach)
    wrapper_per_tensor = per_tensor(model_per_tensor, foreach=foreach)
    assert len(wrapper_merged.optimizer.param_groups) < len(wrapper_per_tensor.optimizer.param_groups)
    train(model_merged, wrapper_merged, scheduler(wrapper_merged), 0, STEPS)
    train(model_per_tensor, wrapper_per_tensor, scheduler(wrapper_per_tensor), 0, STEPS)
    for after_merged, after_per_tensor in zip(trainable(model_merged), trainable(model_per_tensor)):
        assert torch.equal(after_merged, after_per_tensor)


def test_vit_l_snella_has_four_groups_for_its_779_trainable_tensors():
    init_default_scope('mmseg')
    cfg = Config.fromfile(f'{REPO}/configs/snella_vit-l_ade20k.py')
    with torch.device('meta'):
        model = MODELS.build(cfg.model)
    groups = build_optim_wrapper(model, cfg.optim_wrapper).optimizer.param_groups
    assert (len(groups), sum(len(g['params']) for g in groups)) == (VIT_L_GROUPS, VIT_L_TENSORS)


def test_the_constructor_logs_one_summary_and_no_line_per_tensor(capsys):
    read_log = log_from_here(capsys)
    model = TinySegmentor()
    groups = merged(model).optimizer.param_groups
    log = read_log()
    assert 'paramwise_options' not in log and 'is skipped since' not in log
    tensors = sum(len(g['params']) for g in groups)
    assert f'({tensors} tensors) in {len(groups)} groups' in log
    assert log.count('  group ') == len(groups)


def per_tensor_checkpoint(model: nn.Module) -> dict:
    """A checkpoint of the old layout after the first half of the schedule, as the Runner writes it."""
    wrapper = per_tensor(model)
    schedule = scheduler(wrapper)
    train(model, wrapper, schedule, 0, STEPS // 2)
    return saved(dict(state_dict=model.state_dict(), optimizer=wrapper.state_dict(),
                      param_schedulers=[schedule.state_dict()]))


def test_a_per_tensor_checkpoint_resumes_onto_merged_groups_and_trains_on_identically():
    torch.manual_seed(0)
    model_per_tensor = TinySegmentor()
    model_merged = copy.deepcopy(model_per_tensor)
    checkpoint = per_tensor_checkpoint(model_per_tensor)
    wrapper = per_tensor(model_per_tensor)  # the old layout resumed, as the Runner does: build both, then load
    schedule = scheduler(wrapper)
    wrapper.load_state_dict(saved(checkpoint)['optimizer'])
    schedule.load_state_dict(saved(checkpoint)['param_schedulers'][0])
    train(model_per_tensor, wrapper, schedule, STEPS // 2, STEPS)

    model_merged.load_state_dict(checkpoint['state_dict'])
    wrapper = merged(model_merged)
    schedule = scheduler(wrapper)
    assert merge_per_tensor_checkpoint(checkpoint, model_merged, wrapper)
    wrapper.load_state_dict(checkpoint['optimizer'])
    schedule.load_state_dict(checkpoint['param_schedulers'][0])
    train(model_merged, wrapper, schedule, STEPS // 2, STEPS)
    for after_merged, after_per_tensor in zip(trainable(model_merged), trainable(model_per_tensor)):
        assert torch.equal(after_merged, after_per_tensor)


def test_a_merged_checkpoint_is_left_as_it_is():
    model = TinySegmentor()
    wrapper = merged(model)
    checkpoint = dict(optimizer=wrapper.state_dict(), param_schedulers=[scheduler(wrapper).state_dict()])
    assert not merge_per_tensor_checkpoint(checkpoint, model, wrapper)


def test_loading_a_per_tensor_state_unconverted_names_the_cause_and_the_fix():
    model = TinySegmentor()
    checkpoint = per_tensor_checkpoint(model)
    with pytest.raises(ValueError, match=r'one param group per tensor.*ResumeCompatibilityHook'):
        merged(model).load_state_dict(checkpoint['optimizer'])


def test_a_per_tensor_checkpoint_whose_merged_tensors_had_different_options_is_refused():
    model = TinySegmentor()
    checkpoint = per_tensor_checkpoint(model)
    checkpoint['optimizer']['param_groups'][1]['lr'] *= 2  # tensors 0 and 1 (both factors) share a group now
    with pytest.raises(ValueError, match='options differ'):
        merge_per_tensor_checkpoint(checkpoint, model, merged(model))


def runner_config(data_root: str, work_dir: str, constructor: str) -> Config:
    cfg = tiny_config(data_root, work_dir, max_iters=STEPS, checkpoint_interval=STEPS // 2)
    cfg.train_cfg.val_interval = STEPS + 1  # no validation: only the training path matters here
    cfg.optim_wrapper.constructor = constructor
    cfg.optim_wrapper.paramwise_cfg = dict(custom_keys=DISTINCT_CUSTOM_KEYS)
    cfg.param_scheduler = [dict(type='WarmupPolyLR', warmup=2, start_factor=0.1, by_epoch=False)]
    return cfg


def test_the_runner_resumes_a_per_tensor_run_onto_merged_groups_and_ends_as_the_uninterrupted_run(ade_root, tmp_path):
    old_dir = str(tmp_path / 'per_tensor')
    Runner.from_cfg(runner_config(ade_root, old_dir, 'PerTensorTestConstructor')).train()
    resumed = runner_config(ade_root, str(tmp_path / 'merged'), 'SNELLAOptimWrapperConstructor')
    resumed.resume, resumed.load_from = True, osp.join(old_dir, f'iter_{STEPS // 2}.pth')
    Runner.from_cfg(resumed).train()
    expected = load_checkpoint_safely(osp.join(old_dir, f'iter_{STEPS}.pth'))['state_dict']
    actual = load_checkpoint_safely(str(tmp_path / 'merged' / f'iter_{STEPS}.pth'))['state_dict']
    assert expected.keys() == actual.keys()
    assert all(torch.equal(expected[key], actual[key]) for key in expected)
