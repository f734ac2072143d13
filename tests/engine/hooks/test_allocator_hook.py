"""SNELLAAllocatorHook refuses to end a run in which the allocator silently did nothing, follows shortened
schedules, and keeps its allocation plot and JSON current at every checkpoint."""
import os.path as osp

import pytest
from mmengine.runner import Runner

from snella_seg.datasets.demo_data import make_ade20k_like
from snella_seg.engine import SNELLAAllocatorHook
from snella_seg.engine.hooks.allocator_hook import ALLOCATION_JSON, ALLOCATION_PLOT

from tests.helpers.allocator_hook import read_allocation, run_hook
from tests.helpers.configs import tiny_config
from tests.helpers.rank_state_hook import CrashAfterIterationHook  # noqa: F401  (registers it)


def test_a_run_whose_updates_never_got_gradients_fails(tmp_path):
    hook = SNELLAAllocatorHook(target_ratio=0.5, plot=False)
    runner = run_hook(hook, tmp_path, with_gradients=False)
    with pytest.raises(RuntimeError, match='never saw a gradient'):
        hook.after_train(runner)


def test_a_healthy_run_passes_the_checks(tmp_path):
    hook = SNELLAAllocatorHook(target_ratio=0.5, plot=False)
    runner = run_hook(hook, tmp_path)
    hook.after_train(runner)
    assert hook.allocator.importance_updates == 4
    assert (tmp_path / ALLOCATION_JSON).exists()


def test_the_shipped_schedule_arguments_reach_the_target_in_a_four_iteration_run(tmp_path):
    hook = SNELLAAllocatorHook(target_ratio=0.7, init_warmup=0.025, final_warmup=0.25, mask_interval=100,
                               plot=False)
    runner = run_hook(hook, tmp_path, iterations=4)
    hook.after_train(runner)  # the never-reallocated check passes
    assert hook.allocator.reallocations > 0
    assert hook.allocator.overall_sparsity() == pytest.approx(0.7, abs=1e-3)


def test_a_checkpoint_writes_the_allocation_so_far(tmp_path):
    hook = SNELLAAllocatorHook(target_ratio=0.5, init_warmup=1, log_interval=1)
    runner = run_hook(hook, tmp_path, iterations=3)
    checkpoint = {}
    hook.before_save_checkpoint(runner, checkpoint)
    record = read_allocation(tmp_path)
    assert record['finished'] is False
    assert record['final']['step'] == 3 and record['final']['sparsity'] == hook.allocator.sparsities()
    assert [snapshot['step'] for snapshot in record['history']] == [2, 3]
    assert osp.getsize(tmp_path / ALLOCATION_PLOT) > 10_000
    assert not list(tmp_path.glob('*.tmp'))


def test_the_end_of_training_marks_the_allocation_finished(tmp_path):
    hook = SNELLAAllocatorHook(target_ratio=0.5, plot=False)
    runner = run_hook(hook, tmp_path)
    hook.before_save_checkpoint(runner, {})
    hook.after_train(runner)
    assert read_allocation(tmp_path)['finished'] is True


def test_snapshots_follow_log_interval_even_when_reallocations_fall_between_its_multiples(tmp_path):
    hook = SNELLAAllocatorHook(target_ratio=0.5, mask_interval=3, log_interval=5, plot=False)
    runner = run_hook(hook, tmp_path, iterations=40)
    assert [snapshot['step'] for snapshot in hook.history] == [3, 9, 15, 21, 27, 33, 39]
    hook.after_train(runner)


@pytest.fixture(scope='module')
def ade_root(tmp_path_factory):
    return make_ade20k_like(str(tmp_path_factory.mktemp('ade')), num_train=4, num_val=1, size=64, seed=0)


def test_an_interrupted_run_keeps_the_allocation_of_its_last_checkpoint(ade_root, tmp_path):
    cfg = tiny_config(ade_root, str(tmp_path), max_iters=6, checkpoint_interval=2)
    cfg.custom_hooks.append(dict(type='CrashAfterIterationHook', iteration=3))  # before iteration 4
    with pytest.raises(RuntimeError, match='simulated crash'):
        Runner.from_cfg(cfg).train()
    record = read_allocation(tmp_path)
    assert record['finished'] is False and record['final']['step'] == 2
    assert osp.getsize(tmp_path / ALLOCATION_PLOT) > 10_000
