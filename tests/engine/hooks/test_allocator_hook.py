"""SNELLAAllocatorHook refuses to end a run in which the allocator silently did nothing, follows shortened
schedules, keeps its allocation plot and JSON current at every checkpoint, compares ranks on its schedule, and
keeps its bookkeeping per step to a few host syncs whatever the model's size."""
import os.path as osp

import pytest
import torch
from mmengine.runner import Runner

from dispatch_counter import DispatchCounter
from snella_seg.datasets.demo_data import make_ade20k_like
from snella_seg.engine import FiniteTrainingHook, SNELLAAllocatorHook
from snella_seg.engine.hooks import allocator_hook
from snella_seg.engine.hooks.allocator_hook import ALLOCATION_JSON, ALLOCATION_PLOT
from snella_seg.snella import SparseKernelDelta

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


def test_the_ema_model_gets_the_live_sparsities_and_reads_them_without_a_host_sync(tmp_path):
    hook = SNELLAAllocatorHook(target_ratio=0.5, plot=False)
    runner = run_hook(hook, tmp_path, with_ema_model=True)
    ema_updates = {n: m for n, m in runner.hooks[0].ema_model.module.named_modules()
                   if isinstance(m, SparseKernelDelta)}
    with DispatchCounter() as counter:
        ema_sparsities = {name: update.sparsity_value for name, update in ema_updates.items()}
    assert counter.host_syncs == 0
    assert ema_sparsities == hook.allocator.sparsities() and len(set(ema_sparsities.values())) > 1


@pytest.mark.parametrize('check_interval', [0, 2.0, True])
def test_check_interval_must_be_a_positive_int(check_interval):
    with pytest.raises(ValueError, match='check_interval must be an int >= 1'):
        SNELLAAllocatorHook(target_ratio=0.5, check_interval=check_interval)


def test_ranks_are_compared_at_the_first_reallocation_every_check_interval_and_the_last(tmp_path, monkeypatch):
    monkeypatch.setattr(allocator_hook, 'get_world_size', lambda: 2)
    monkeypatch.setattr(allocator_hook, 'all_gather', lambda fingerprint: [fingerprint, fingerprint.clone()])
    checked = []
    compare = SNELLAAllocatorHook._check_ranks_agree
    monkeypatch.setattr(SNELLAAllocatorHook, '_check_ranks_agree',
                        lambda self, runner, step: checked.append(step) or compare(self, runner, step))
    hook = SNELLAAllocatorHook(target_ratio=0.5, check_interval=10, plot=False)
    run_hook(hook, tmp_path, iterations=25)  # reallocates at every iteration
    assert checked == [1, 10, 20, 25] and hook.rank_checks == 4


def fingerprint_and_operations(depth: int, tmp_path):
    hook = SNELLAAllocatorHook(target_ratio=0.5, plot=False)
    runner = run_hook(hook, tmp_path, iterations=2, depth=depth)
    hook._fingerprint(runner)  # the first call makes the fixed weights
    with DispatchCounter() as counter:
        fingerprint = hook._fingerprint(runner)
    return fingerprint, counter.total


def test_the_rank_fingerprint_is_twelve_numbers_made_in_as_many_operations_at_8_blocks_as_at_4(tmp_path):
    (shallow, shallow_operations), (deep, deep_operations) = (fingerprint_and_operations(depth, tmp_path)
                                                             for depth in (4, 8))
    assert shallow.shape == deep.shape == (12,) and shallow.dtype == torch.float64
    assert deep_operations == shallow_operations


def bookkeeping_host_syncs(depth: int, tmp_path) -> int:
    """Host syncs of one optimizer step (finite guard and importance update) and the reallocation after it."""
    guard, hook = FiniteTrainingHook(), SNELLAAllocatorHook(target_ratio=0.5, total_steps=10, plot=False)
    runner = run_hook(hook, tmp_path, iterations=3, depth=depth, extra_hooks=[guard])
    runner.model(torch.randn(2, 6, 4)).sum().backward()
    with DispatchCounter() as counter:
        runner.optim_wrapper.optimizer.step()
        runner.iter = 3
        hook.after_train_iter(runner, 3)
    assert hook.allocator.reallocations == 4 and hook.allocator.importance_updates == 4
    return counter.host_syncs


def test_a_step_of_bookkeeping_makes_three_host_syncs_whatever_the_depth(tmp_path):
    """The finite guard, the importance update's finite check, and reading all scores back to reallocate."""
    syncs = {depth: bookkeeping_host_syncs(depth, tmp_path / str(depth)) for depth in (4, 8)}
    assert syncs == {4: 3, 8: 3}


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
