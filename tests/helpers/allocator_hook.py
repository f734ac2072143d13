"""Driving SNELLAAllocatorHook through a few optimizer steps without a Runner (milliseconds), in one process or as
one rank of a two-process gloo group."""
import copy
import json
import os.path as osp
from datetime import timedelta
from types import SimpleNamespace
from typing import Optional

import torch

from snella_seg.engine import SNELLAAllocatorHook
from snella_seg.engine.hooks.allocator_hook import ALLOCATION_JSON
from snella_seg.snella import inject_snella

from .tiny_vit import ALL_TARGETS, TinyViT


def run_hook(hook: SNELLAAllocatorHook, work_dir, iterations: int = 4, with_gradients: bool = True,
             depth: int = 2, with_ema_model: bool = False, extra_hooks=()) -> SimpleNamespace:
    """Drive ``hook`` through ``iterations`` optimizer steps of a tiny model with ``depth`` blocks as the Runner
    would; returns the stand-in runner (``max_iters`` = ``iterations``). ``with_ema_model`` gives the runner an
    EMAHook-like hook holding a copy of the model; ``extra_hooks`` get ``before_train`` too. ``after_train`` is left
    to the caller."""
    model = TinyViT(depth=depth)
    inject_snella(model, ALL_TARGETS, rank=4)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.0)
    ema_hooks = [SimpleNamespace(ema_model=SimpleNamespace(module=copy.deepcopy(model)))] if with_ema_model else []
    runner = SimpleNamespace(model=model, max_iters=iterations, optim_wrapper=SimpleNamespace(optimizer=optimizer),
                             logger=SimpleNamespace(info=lambda *a: None), work_dir=str(work_dir),
                             message_hub=SimpleNamespace(update_scalar=lambda *a, **k: None),
                             visualizer=SimpleNamespace(add_scalars=lambda *a, **k: None), iter=0, hooks=ema_hooks)
    for extra in extra_hooks:
        extra.before_train(runner)
    hook.before_train(runner)
    for iteration in range(iterations):
        if with_gradients:
            model(torch.randn(2, 6, 4)).sum().backward()
        optimizer.step()
        optimizer.zero_grad()
        runner.iter = iteration
        hook.after_train_iter(runner, iteration)
    return runner


def read_allocation(work_dir) -> dict:
    with open(osp.join(str(work_dir), ALLOCATION_JSON)) as f:
        return json.load(f)


def check_ranks_as_one_of_two(rank: int, rendezvous_file: str, work_dir: str, perturbed_rank: Optional[int]) -> None:
    """One rank of a two-process gloo group (``torch.multiprocessing.spawn`` target): train a few identical steps
    (the hook checks the ranks as it reallocates), then nudge one entry of one factor on ``perturbed_rank`` by a
    single float32 step and check once more. Writes ``rank<N>.json``: checks passed in training, the error if any."""
    torch.distributed.init_process_group('gloo', init_method=f'file://{rendezvous_file}', rank=rank, world_size=2,
                                         timeout=timedelta(seconds=60))
    try:
        torch.manual_seed(0)  # the same model and inputs on both ranks
        hook = SNELLAAllocatorHook(target_ratio=0.5, plot=False)
        runner = run_hook(hook, work_dir, iterations=4)
        checks_in_training = hook.rank_checks
        if rank == perturbed_rank:
            with torch.no_grad():
                entries = next(iter(hook.allocator.layers.values())).in_factors.view(-1)
                largest = entries.abs().argmax()
                entries[largest] = torch.nextafter(entries[largest], 2 * entries[largest])
        error = None
        try:
            hook._check_ranks_agree(runner, step=5)
        except RuntimeError as exc:
            error = str(exc)
        with open(osp.join(work_dir, f'rank{rank}.json'), 'w') as f:
            json.dump({'checks_in_training': checks_in_training, 'error': error}, f)
    finally:
        torch.distributed.destroy_process_group()
