"""A run interrupted after a checkpoint and resumed ends bit-identical to an uninterrupted one, under the shipped
configs' randomness (dropout, stochastic depth, random augmentation), in one process and in two (gloo)."""
import json
import os.path as osp

import pytest
import torch
from mmengine.runner import Runner

from snella_seg.apis import test as run_test
from snella_seg.engine.hooks.allocator_hook import CHECKPOINT_KEY as ALLOCATOR_KEY
from snella_seg.utils.checkpoint_loading import load_checkpoint_safely
from snella_seg.engine.hooks.rng_state_hook import CHECKPOINT_KEY as RNG_KEY

from tests.helpers.configs import realistic_tiny_config, tiny_config
from tests.helpers.rank_state_hook import SimulatedCrash
from tests.helpers.tools import dist_train, failure_report

MAX_ITERS, CHECKPOINT_INTERVAL = 6, 3
COMPARED = ('state_dict', 'optimizer', ALLOCATOR_KEY, 'param_schedulers', RNG_KEY)


def resume_config(data_root: str, work_dir: str, rng_hook: bool = True):
    cfg = realistic_tiny_config(data_root, work_dir, max_iters=MAX_ITERS, checkpoint_interval=CHECKPOINT_INTERVAL)
    if not rng_hook:
        cfg.custom_hooks = [hook for hook in cfg.custom_hooks if hook['type'] != 'RNGStateHook']
    cfg.custom_imports = dict(imports=['snella_seg', 'tests.helpers.rank_state_hook'], allow_failed_imports=False)
    cfg.custom_hooks.append(dict(type='ValMetricDumpHook'))
    return cfg


def crashing(cfg):
    cfg.custom_hooks.append(dict(type='CrashAfterIterationHook', iteration=CHECKPOINT_INTERVAL))
    return cfg


def assert_identical(expected, actual, where: str) -> None:
    if isinstance(expected, torch.Tensor):
        assert isinstance(actual, torch.Tensor) and torch.equal(expected, actual), where
    elif isinstance(expected, dict):
        assert expected.keys() == actual.keys(), where
        for key in expected:
            assert_identical(expected[key], actual[key], f'{where}.{key}')
    elif isinstance(expected, (list, tuple)):
        assert len(expected) == len(actual), where
        for index, (a, b) in enumerate(zip(expected, actual)):
            assert_identical(a, b, f'{where}[{index}]')
    else:
        assert expected == actual, where


def assert_same_final_checkpoint(uninterrupted_dir: str, resumed_dir: str) -> None:
    expected = load_checkpoint_safely(osp.join(uninterrupted_dir, f'iter_{MAX_ITERS}.pth'))
    actual = load_checkpoint_safely(osp.join(resumed_dir, f'iter_{MAX_ITERS}.pth'))
    for key in COMPARED:
        assert_identical(expected[key], actual[key], key)


def train_in_process(cfg) -> None:
    Runner.from_cfg(cfg).train()


def interrupt_and_resume_in_process(data_root: str, work_dir: str, rng_hook: bool = True) -> None:
    with pytest.raises(SimulatedCrash):
        train_in_process(crashing(resume_config(data_root, work_dir, rng_hook)))
    resumed = resume_config(data_root, work_dir, rng_hook)
    resumed.resume = True
    train_in_process(resumed)


def test_resumed_run_ends_identical_to_an_uninterrupted_one(ade_root, tmp_path):
    train_in_process(resume_config(ade_root, str(tmp_path / 'uninterrupted')))
    interrupt_and_resume_in_process(ade_root, str(tmp_path / 'resumed'))
    assert_same_final_checkpoint(str(tmp_path / 'uninterrupted'), str(tmp_path / 'resumed'))


def test_the_realistic_set_up_needs_the_rng_hook_to_resume_identically(ade_root, tmp_path):
    """mmengine alone does not restore the random numbers this set-up draws: the comparison above can fail."""
    train_in_process(resume_config(ade_root, str(tmp_path / 'uninterrupted'), rng_hook=False))
    interrupt_and_resume_in_process(ade_root, str(tmp_path / 'resumed'), rng_hook=False)
    expected = load_checkpoint_safely(osp.join(tmp_path, 'uninterrupted', f'iter_{MAX_ITERS}.pth'))
    actual = load_checkpoint_safely(osp.join(tmp_path, 'resumed', f'iter_{MAX_ITERS}.pth'))
    differing = [k for k, v in expected['state_dict'].items() if not torch.equal(v, actual['state_dict'][k])]
    assert differing


def test_resume_from_a_checkpoint_without_rng_state_warns_and_trains_on(ade_root, tmp_path):
    work_dir = str(tmp_path / 'work')
    with pytest.raises(SimulatedCrash):
        train_in_process(crashing(resume_config(ade_root, work_dir, rng_hook=False)))
    resumed = resume_config(ade_root, work_dir)
    resumed.resume = True
    runner = Runner.from_cfg(resumed)
    runner.train()
    assert runner.iter == MAX_ITERS
    with open(osp.join(runner.log_dir, f'{runner.timestamp}.log')) as f:
        assert 'holds no RNG states' in f.read()


# ------------------------------------------------------------------------------------------------ two processes
@pytest.fixture(scope='module')
def two_process_runs(ade_root, tmp_path_factory):
    """An uninterrupted 2-process run, and one that crashes after the first checkpoint and is resumed."""
    root = tmp_path_factory.mktemp('two_process')
    runs = {}
    for name, cfg, options in (
            ('uninterrupted', resume_config(ade_root, str(root / 'uninterrupted')), ()),
            ('crashed', crashing(resume_config(ade_root, str(root / 'resumed'))), ()),
            ('resumed', resume_config(ade_root, str(root / 'resumed')), ('--resume',))):
        config = str(root / f'{name}.py')
        cfg.dump(config)
        runs[name] = dist_train(config, cfg.work_dir, *options)
    return root, runs


def test_two_process_resumed_run_ends_identical_to_an_uninterrupted_one(two_process_runs):
    root, runs = two_process_runs
    assert runs['uninterrupted'].returncode == 0, failure_report(runs['uninterrupted'])
    assert runs['crashed'].returncode != 0 and 'simulated crash' in runs['crashed'].stderr
    assert runs['resumed'].returncode == 0, failure_report(runs['resumed'])
    checkpoint = load_checkpoint_safely(str(root / 'uninterrupted' / f'iter_{MAX_ITERS}.pth'))
    assert checkpoint[RNG_KEY]['world_size'] == 2
    assert_same_final_checkpoint(str(root / 'uninterrupted'), str(root / 'resumed'))


def test_two_process_validation_reports_the_miou_that_the_test_tool_finds(two_process_runs, ade_root, tmp_path):
    root, runs = two_process_runs
    assert runs['uninterrupted'].returncode == 0, failure_report(runs['uninterrupted'])
    with open(root / 'uninterrupted' / 'val_metrics.jsonl') as f:
        in_training = [json.loads(line) for line in f]
    assert [row['iter'] for row in in_training] == [CHECKPOINT_INTERVAL, MAX_ITERS]
    for row in in_training:
        cfg = realistic_tiny_config(ade_root, str(tmp_path / str(row['iter'])))
        tested = run_test(cfg, str(root / 'uninterrupted' / f'iter_{row["iter"]}.pth'))
        assert tested['mIoU'] == row['mIoU'], row['iter']


# ------------------------------------------------------------------------------------------- longer schedule
def finished_tiny_run(data_root: str, work_dir: str):
    Runner.from_cfg(tiny_config(data_root, work_dir, max_iters=2, checkpoint_interval=2)).train()
    longer = tiny_config(data_root, work_dir, max_iters=4, checkpoint_interval=2)
    longer.resume = True
    return longer


def test_resume_with_a_longer_schedule_stops_and_names_each_option(ade_root, tmp_path):
    longer = finished_tiny_run(ade_root, str(tmp_path))
    with pytest.raises(ValueError) as refusal:
        Runner.from_cfg(longer).train()
    message = str(refusal.value)
    for expected in ('train_cfg.max_iters: 2 -> 4', 'final learning rate', 're-plans its budget for 4 iterations',
                     'load_from=<checkpoint>', 'resume_with_changed_schedule=True'):
        assert expected in message


def test_resume_with_a_longer_schedule_accepted_by_the_option_trains_on_with_a_warning(ade_root, tmp_path):
    longer = finished_tiny_run(ade_root, str(tmp_path))
    longer.resume_with_changed_schedule = True
    runner = Runner.from_cfg(longer)
    runner.train()
    assert runner.iter == 4
    with open(osp.join(runner.log_dir, f'{runner.timestamp}.log')) as f:
        assert 'resuming although the schedule differs' in f.read()
