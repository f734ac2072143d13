"""The schedule comparison of ResumeCompatibilityHook, without a Runner: what counts as a change, and a checkpoint
whose config text no longer parses."""
from types import SimpleNamespace

import pytest
from mmengine.config import Config

from snella_seg.engine.hooks.resume_compatibility_hook import ResumeRefusedError, _check_schedule_unchanged

POLY_40 = [dict(type='PolyLR', power=1.0, begin=0, end=40, by_epoch=False)]


class Warnings(list):
    def warning(self, line):
        self.append(line)


def runner_of(cfg: Config):
    return SimpleNamespace(cfg=cfg, max_iters=cfg.train_cfg.max_iters, logger=Warnings())


def saved(cfg: Config) -> dict:
    return {'meta': {'cfg': cfg.pretty_text}}


def test_another_param_scheduler_alone_is_refused():
    cfg = Config(dict(train_cfg=dict(max_iters=40, val_interval=10), param_scheduler=POLY_40))
    other = Config(dict(train_cfg=dict(max_iters=40, val_interval=20), param_scheduler=[dict(POLY_40[0], power=0.9)]))
    with pytest.raises(ResumeRefusedError, match=r"param_scheduler: .*'power': 1\.0.* -> .*'power': 0\.9"):
        _check_schedule_unchanged(runner_of(other), saved(cfg))
    _check_schedule_unchanged(runner_of(Config(dict(cfg.to_dict(), train_cfg=dict(max_iters=40, val_interval=5)))),
                              saved(cfg))  # another validation interval is no schedule change


def test_a_config_text_that_no_longer_parses_is_skipped_with_a_warning():
    runner = runner_of(Config(dict(train_cfg=dict(max_iters=60), param_scheduler=POLY_40)))
    _check_schedule_unchanged(runner, {'meta': {'cfg': 'train_cfg = dict(max_iters=40'}})
    assert len(runner.logger) == 1 and 'schedule is not compared' in runner.logger[0]
