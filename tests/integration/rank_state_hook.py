"""A test-only hook that saves what each rank ends with, so a test can compare ranks after a distributed run."""
import os.path as osp

import torch
from mmengine.dist import get_rank
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
