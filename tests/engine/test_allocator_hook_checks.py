"""SNELLAAllocatorHook refuses to end a run in which the allocator silently did nothing."""
from types import SimpleNamespace

import pytest
import torch

from snella_seg.engine import SNELLAAllocatorHook
from snella_seg.snella import inject_snella

from ..snella.tiny_vit import ALL_TARGETS, TinyViT


def finished_hook(with_gradients: bool, tmp_path):
    model = TinyViT()
    inject_snella(model, ALL_TARGETS, rank=4)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.0)
    runner = SimpleNamespace(model=model, max_iters=4, optim_wrapper=SimpleNamespace(optimizer=optimizer),
                             logger=SimpleNamespace(info=lambda *a: None), work_dir=str(tmp_path),
                             message_hub=SimpleNamespace(update_scalar=lambda *a, **k: None),
                             visualizer=SimpleNamespace(add_scalars=lambda *a, **k: None), iter=0, hooks=[])
    hook = SNELLAAllocatorHook(target_ratio=0.5, plot=False)
    hook.before_train(runner)
    for iteration in range(4):
        if with_gradients:
            model(torch.randn(2, 6, 4)).sum().backward()
        optimizer.step()
        optimizer.zero_grad()
        runner.iter = iteration
        hook.after_train_iter(runner, iteration)
    return hook, runner


def test_a_run_whose_updates_never_got_gradients_fails(tmp_path):
    hook, runner = finished_hook(with_gradients=False, tmp_path=tmp_path)
    with pytest.raises(RuntimeError, match='never saw a gradient'):
        hook.after_train(runner)


def test_a_healthy_run_passes_the_checks(tmp_path):
    hook, runner = finished_hook(with_gradients=True, tmp_path=tmp_path)
    hook.after_train(runner)
    assert hook.allocator.importance_updates == 4
    assert (tmp_path / 'snella_allocation.json').exists()
