"""Failure modes that must be loud: bad data, incompatible resume, divergence, an allocator that never ran,
and mixed precision that must not corrupt the importance."""
import os
import os.path as osp

import numpy as np
import pytest
import torch
from mmengine.hooks import Hook
from mmengine.runner import Runner
from mmseg.registry import HOOKS

from snella_seg.apis import train
from snella_seg.datasets import DatasetError
from snella_seg.utils.checkpoint_loading import load_checkpoint_safely
from snella_seg.snella import BiLevelAllocator, inject_snella

from tests.helpers.configs import tiny_config
from tests.helpers.tiny_vit import ALL_TARGETS, TinyViT


@HOOKS.register_module(force=True)
class PoisonWeightsHook(Hook):
    """Test-only: make the model diverge at a chosen iteration."""

    def __init__(self, at_iteration: int):
        self.at_iteration = at_iteration

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        if runner.iter + 1 == self.at_iteration:
            with torch.no_grad():
                runner.model.decode_head.conv_seg.weight.fill_(float('nan'))


def test_missing_data_root_is_a_clear_error(ade_root, tmp_path):
    cfg = tiny_config(str(tmp_path / 'nowhere'), str(tmp_path / 'work'))
    with pytest.raises(DatasetError, match=r'train_dataloader.dataset: data_root .*nowhere.* does not exist'):
        train(cfg)


def test_labels_outside_the_class_range_are_named_before_training(ade_root, tmp_path):
    import shutil
    root = str(tmp_path / 'ade')
    shutil.copytree(ade_root, root)
    label_dir = osp.join(root, 'annotations', 'training')
    first = sorted(os.listdir(label_dir))[0]
    import cv2
    cv2.imwrite(osp.join(label_dir, first), np.full((64, 64), 200, np.uint8))
    cfg = tiny_config(root, str(tmp_path / 'work'))
    with pytest.raises(DatasetError, match=first):
        train(cfg)


def test_resume_with_an_incompatible_config_is_refused(ade_root, tmp_path):
    work_dir = str(tmp_path / 'work')
    Runner.from_cfg(tiny_config(ade_root, work_dir, max_iters=2, checkpoint_interval=2)).train()
    changed = tiny_config(ade_root, work_dir, max_iters=4)
    changed.model.backbone.snella.rank = 8
    changed.resume = True
    with pytest.raises(ValueError, match='cannot resume: the checkpoint was written by a different config'):
        Runner.from_cfg(changed).train()


def test_divergence_stops_training_and_keeps_the_last_good_checkpoint(ade_root, tmp_path):
    work_dir = str(tmp_path / 'work')
    cfg = tiny_config(ade_root, work_dir, max_iters=6, checkpoint_interval=2)
    cfg.custom_hooks.append(dict(type='PoisonWeightsHook', at_iteration=3))
    runner = Runner.from_cfg(cfg)
    with pytest.raises(FloatingPointError, match='non-finite gradients at iteration 3'):
        runner.train()
    assert sorted(f for f in os.listdir(work_dir) if f.endswith('.pth')) == ['iter_2.pth']
    saved = load_checkpoint_safely(osp.join(work_dir, 'iter_2.pth'))
    assert all(torch.isfinite(v).all() for v in saved['state_dict'].values() if v.is_floating_point())


def test_allocator_that_never_reallocated_fails_the_run(ade_root, tmp_path):
    cfg = tiny_config(ade_root, str(tmp_path / 'work'), max_iters=3, checkpoint_interval=3)
    cfg.custom_hooks[0].update(init_warmup=0, final_warmup=0, mask_interval=50, total_steps=100)
    with pytest.raises(RuntimeError, match='never reallocated'):
        Runner.from_cfg(cfg).train()


def test_bf16_amp_on_cpu_trains_with_finite_importance(ade_root, tmp_path):
    cfg = tiny_config(ade_root, str(tmp_path / 'work'), max_iters=3, checkpoint_interval=3)
    runner = train(cfg, amp=True)
    assert type(runner.optim_wrapper).__name__ == 'CPUAmpOptimWrapper'
    hook = next(h for h in runner.hooks if type(h).__name__ == 'SNELLAAllocatorHook')
    assert hook.allocator.importance_updates == 3
    assert all(np.isfinite(v) and v > 0 for v in hook.allocator.scores().values())


def _scaled_setup(seed=0):
    torch.manual_seed(seed)
    model = TinyViT()
    inject_snella(model, ALL_TARGETS, rank=4)
    allocator = BiLevelAllocator(model, target_ratio=0.5, total_steps=10)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.0)

    def update_importance(*args):  # as SNELLAAllocatorHook registers it
        allocator.update_importance()
    optimizer.register_step_pre_hook(update_importance)
    return model, allocator, optimizer


def test_loss_scaling_importance_uses_unscaled_gradients_and_skips_overflow():
    x = torch.randn(4, 6, 4)
    plain_model, plain, plain_opt = _scaled_setup()
    plain_model(x).square().mean().backward()
    plain_opt.step()

    model, scaled, optimizer = _scaled_setup()
    scaler = torch.amp.GradScaler('cpu', init_scale=2.0 ** 12)
    scaler.scale(model(x).square().mean()).backward()
    scaler.step(optimizer)
    scaler.update()
    for name in plain.sensitivity:
        for a, b in zip(plain.sensitivity[name], scaled.sensitivity[name]):
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-12)

    before = {n: [t.clone() for t in ts] for n, ts in scaled.sensitivity.items()}
    optimizer.zero_grad()
    scaler.scale(model(x).square().mean()).backward()
    next(p for p in model.parameters() if p.requires_grad).grad[0, 0, 0] = float('inf')  # an fp16 overflow
    scaler.step(optimizer)  # the scaler skips the step, so the importance update never runs
    scaler.update()
    assert scaled.importance_updates == 1
    for name, tensors in before.items():
        assert all(torch.equal(a, b) for a, b in zip(tensors, scaled.sensitivity[name]))


def test_testing_needs_only_the_test_data(ade_root, trained_checkpoint, tmp_path):
    """Regression: test() checked the training folders too, so evaluating on a machine without them failed."""
    from snella_seg.apis import test
    cfg = tiny_config(str(tmp_path / 'no-train-data'), str(tmp_path / 'work'))
    cfg.test_dataloader.dataset.data_root = ade_root
    assert 'mIoU' in test(cfg, trained_checkpoint)


def test_load_from_starts_a_fresh_allocation(ade_root, trained_checkpoint, tmp_path):
    """load_from begins a new run from the weights: the allocation schedule restarts, so the checkpoint's
    allocator state (importance, budget) must not be carried over as on resume."""
    cfg = tiny_config(ade_root, str(tmp_path / 'work'), max_iters=2, checkpoint_interval=2)
    cfg.load_from = trained_checkpoint
    runner = Runner.from_cfg(cfg)
    runner.train()
    hook = next(h for h in runner.hooks if type(h).__name__ == 'SNELLAAllocatorHook')
    assert hook.allocator.importance_updates == 2  # not 2 from the loaded run + 2
