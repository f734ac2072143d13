"""AdaLoRAHook: peft's AdaLoRA schedule follows a shortened ``train_cfg.max_iters``, so ranks are pruned in it."""
import copy

import torch
from mmengine.config import Config
from mmengine.runner import Runner
from mmseg.registry import MODELS

from snella_seg.engine.hooks.adalora_hook import AdaLoRAHook, rescale_schedule

from tests.helpers.configs import tiny_config
from tests.helpers.paths import REPO
from tests.helpers.peft_configs import peft_configs

SHIPPED = Config.fromfile(f'{REPO}/configs/_base_/methods/adalora.py').peft_method.config
SCHEDULE = ('total_step', 'tinit', 'tfinal', 'deltaT')


def adalora_run(ade_root: str, folder, max_iters: int, **hook_options) -> Runner:
    """A tiny AdaLoRA run with the shipped 160k schedule, trained for ``max_iters`` iterations."""
    cfg = tiny_config(ade_root, str(folder / 'work'), max_iters=max_iters, checkpoint_interval=max_iters)
    inner = cfg.model.backbone.backbone
    torch.manual_seed(1)
    pretrained = str(folder / 'vit.pth')
    torch.save(MODELS.build(copy.deepcopy(inner)).model.state_dict(), pretrained)
    inner.pretrained = pretrained
    method = dict(peft_configs()['adalora'], **{key: SHIPPED[key] for key in SCHEDULE})
    cfg.model.backbone = dict(type='PEFTBackbone', backbone=inner, method=dict(type='peft', config=method))
    cfg.custom_hooks = [dict(type='AdaLoRAHook', **hook_options)]
    runner = Runner.from_cfg(cfg)
    runner.train()
    return runner


def adalora_config(runner: Runner):
    tuner = AdaLoRAHook._tuner_of(runner)
    return tuner.peft_config[tuner.rankallocator.adapter_name]


def test_the_shipped_schedule_keeps_its_fractions_when_rescaled():
    config = Config(dict(SHIPPED))
    rescale_schedule(config, 1000)
    assert (config.total_step, config.tinit, config.tfinal, config.deltaT) == (1000, 100, 200, 1)
    rescale_schedule(config, 80000)
    assert (config.total_step, config.tinit, config.tfinal, config.deltaT) == (80000, 8000, 16000, 80)


def test_a_shortened_schedule_prunes_ranks_as_the_full_one_would(ade_root, tmp_path):
    runner = adalora_run(ade_root, tmp_path, max_iters=10)
    config = adalora_config(runner)
    assert (config.total_step, config.tinit, config.tfinal, config.deltaT) == (10, 1, 2, 1)
    # peft fixes the rank pattern when the final phase starts; the budget is the target rank on average.
    assert config.rank_pattern is not None
    kept = sum(int(torch.as_tensor(mask).sum()) for mask in config.rank_pattern.values())
    assert kept == config.target_r * len(config.rank_pattern) < config.init_r * len(config.rank_pattern)


def test_the_configured_schedule_is_kept_on_request_and_then_never_prunes(ade_root, tmp_path):
    config = adalora_config(adalora_run(ade_root, tmp_path, max_iters=10, follow_max_iters=False))
    assert (config.total_step, config.tinit, config.tfinal, config.deltaT) == tuple(SHIPPED[key] for key in SCHEDULE)
    assert config.rank_pattern is None
