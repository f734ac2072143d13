"""Driving SNELLAAllocatorHook through a few optimizer steps without a Runner (milliseconds)."""
import json
import os.path as osp
from types import SimpleNamespace

import torch

from snella_seg.engine import SNELLAAllocatorHook
from snella_seg.engine.hooks.allocator_hook import ALLOCATION_JSON
from snella_seg.snella import inject_snella

from .tiny_vit import ALL_TARGETS, TinyViT


def run_hook(hook: SNELLAAllocatorHook, work_dir, iterations: int = 4,
             with_gradients: bool = True) -> SimpleNamespace:
    """Drive ``hook`` through ``iterations`` optimizer steps of a tiny model as the Runner would; returns the
    stand-in runner (``max_iters`` = ``iterations``). ``after_train`` is left to the caller."""
    model = TinyViT()
    inject_snella(model, ALL_TARGETS, rank=4)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.0)
    runner = SimpleNamespace(model=model, max_iters=iterations, optim_wrapper=SimpleNamespace(optimizer=optimizer),
                             logger=SimpleNamespace(info=lambda *a: None), work_dir=str(work_dir),
                             message_hub=SimpleNamespace(update_scalar=lambda *a, **k: None),
                             visualizer=SimpleNamespace(add_scalars=lambda *a, **k: None), iter=0, hooks=[])
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
