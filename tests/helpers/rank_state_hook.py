"""Test-only hooks for runs in other processes: what each rank ends with, the validation metrics, a crash."""
import json
import os.path as osp

import torch
from mmengine.dist import get_rank, is_main_process
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmseg.registry import HOOKS


@HOOKS.register_module()
class RankStateDumpHook(Hook):
    priority = 'LOWEST'

    def after_train(self, runner) -> None:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        allocator_hook = next(h for h in runner.hooks if type(h).__name__ == 'SNELLAAllocatorHook')
        state = {
            'params': {n: p.detach().cpu() for n, p in model.named_parameters() if p.requires_grad},
            'sparsity': allocator_hook.allocator.sparsities(),
            'sensitivity': allocator_hook.allocator.state_dict()['sensitivity'],
            'rank_checks': allocator_hook.rank_checks,
        }
        torch.save(state, osp.join(runner.work_dir, f'rank{get_rank()}_state.pth'))


@HOOKS.register_module()
class ValMetricDumpHook(Hook):
    """Writes every validation's metrics (rank 0's, which mmengine reports) to val_metrics.jsonl."""

    def after_val_epoch(self, runner, metrics=None) -> None:
        if is_main_process():
            with open(osp.join(runner.work_dir, 'val_metrics.jsonl'), 'a') as f:
                f.write(json.dumps({'iter': runner.iter, **{k: float(v) for k, v in metrics.items()}}) + '\n')


class SimulatedCrash(RuntimeError):
    pass


@HOOKS.register_module()
class CrashAfterIterationHook(Hook):
    """Fails the run once ``iteration`` and its checkpoint are done, as a killed job would stop there."""

    priority = 'LOWEST'  # after CheckpointHook

    def __init__(self, iteration: int) -> None:
        self.iteration = iteration

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if runner.iter + 1 == self.iteration:
            raise SimulatedCrash(f'simulated crash after iteration {self.iteration}')
