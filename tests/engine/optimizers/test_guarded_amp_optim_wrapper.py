"""GuardedAmpOptimWrapper on the CPU, whose GradScaler and fp16 autocast behave as CUDA's: a run that only skips
steps stops with the iteration named, step hooks see unscaled gradients (fused optimizers too), bf16 where the
device has it, and the host syncs the guard costs."""
import pytest
import torch
from mmengine.hooks import Hook
from mmengine.runner import Runner
from mmseg.registry import HOOKS

from dispatch_counter import DispatchCounter
from snella_seg.engine.optimizers import GuardedAmpOptimWrapper
from snella_seg.engine.optimizers.guarded_amp_optim_wrapper import choose_amp_dtype

from tests.helpers.configs import tiny_config
from tests.helpers.log_capture import log_from_here


def fp16_wrapper(optimizer=None, **kwargs) -> GuardedAmpOptimWrapper:
    kwargs.setdefault('loss_scale', dict(init_scale=2.0 ** 8))
    optimizer = optimizer or torch.optim.SGD(torch.nn.Linear(3, 1).parameters(), lr=0.1)
    return GuardedAmpOptimWrapper(optimizer=optimizer, dtype='float16', device_type='cpu', **kwargs)


def loss_of(wrapper: GuardedAmpOptimWrapper, finite: bool = True) -> torch.Tensor:
    params = [p for group in wrapper.optimizer.param_groups for p in group['params']]
    loss = sum((p.float() ** 2).sum() for p in params)
    return loss if finite else loss * float('nan')


def test_a_diverged_loss_stops_the_run_after_max_consecutive_skips_naming_the_iteration():
    wrapper = fp16_wrapper(max_consecutive_skips=3, min_loss_scale=None)
    wrapper.update_params(loss_of(wrapper))
    wrapper.update_params(loss_of(wrapper, finite=False))
    wrapper.update_params(loss_of(wrapper, finite=False))
    with pytest.raises(FloatingPointError, match=r'stopped at iteration 4: 3 consecutive steps had inf/NaN') as err:
        wrapper.update_params(loss_of(wrapper, finite=False))
    assert 'last applied step was iteration 1' in str(err.value) and 'bf16' in str(err.value)


def test_a_loss_scale_below_min_loss_scale_stops_the_run():
    wrapper = fp16_wrapper(loss_scale=dict(init_scale=4.0), max_consecutive_skips=None, min_loss_scale=1.0)
    wrapper.update_params(loss_of(wrapper, finite=False))  # scale 2
    wrapper.update_params(loss_of(wrapper, finite=False))  # scale 1: not below the floor
    with pytest.raises(FloatingPointError, match=r'iteration 3: the fp16 loss scale fell to 0.5'):
        wrapper.update_params(loss_of(wrapper, finite=False))


def test_occasional_overflow_steps_keep_training():
    wrapper = fp16_wrapper(max_consecutive_skips=2, min_loss_scale=None)
    for _ in range(5):
        wrapper.update_params(loss_of(wrapper, finite=False))
        wrapper.update_params(loss_of(wrapper))
    assert wrapper.loss_scaler.get_scale() == 2.0 ** 8 / 2 ** 5


def test_a_static_loss_scale_is_never_taken_for_a_collapse():
    wrapper = fp16_wrapper(loss_scale=0.5, max_consecutive_skips=None, min_loss_scale=1.0)
    for _ in range(3):
        wrapper.update_params(loss_of(wrapper, finite=False))
    assert wrapper.loss_scaler.get_scale() == 0.5


@pytest.mark.parametrize('fused', [False, True], ids=['foreach', 'fused'])
def test_step_hooks_see_unscaled_gradients_and_never_run_on_an_overflow_step(fused):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    x = torch.randn(8, 4)
    model(x).square().mean().backward()
    true_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    wrapper = fp16_wrapper(torch.optim.AdamW(model.parameters(), lr=0.1, fused=fused))
    seen = []
    wrapper.optimizer.register_step_pre_hook(lambda opt, args, kwargs: seen.append([p.grad.clone()
                                                                                     for p in model.parameters()]))
    with wrapper.optim_context(model):
        wrapper.update_params(model(x).float().square().mean())
    assert len(seen) == 1
    for grad, true in zip(seen[0], true_grads):
        torch.testing.assert_close(grad, true, rtol=1e-2, atol=1e-4)  # fp16 forward
    weights = [p.detach().clone() for p in model.parameters()]
    with wrapper.optim_context(model):
        wrapper.update_params(model(x).float().square().mean() * float('inf'))
    assert len(seen) == 1 and all(torch.equal(p, w) for p, w in zip(model.parameters(), weights))


def test_fp16_costs_one_host_sync_per_step_and_one_more_on_a_skipped_step():
    wrapper = fp16_wrapper()
    with DispatchCounter() as applied:
        wrapper.update_params(loss_of(wrapper))
    with DispatchCounter() as skipped:
        wrapper.update_params(loss_of(wrapper, finite=False))
    assert (applied.host_syncs, skipped.host_syncs) == (1, 2)


def test_bf16_has_no_loss_scaler_and_no_host_sync():
    wrapper = GuardedAmpOptimWrapper(optimizer=torch.optim.SGD(torch.nn.Linear(3, 1).parameters(), lr=0.1),
                                     dtype='bfloat16', device_type='cpu')
    with DispatchCounter() as counter:
        wrapper.update_params(loss_of(wrapper))
    assert not wrapper.loss_scaler.is_enabled() and counter.host_syncs == 0


def test_an_fp16_run_resumes_from_a_bf16_checkpoint_with_fresh_loss_scaling():
    bf16 = GuardedAmpOptimWrapper(optimizer=torch.optim.SGD(torch.nn.Linear(3, 1).parameters(), lr=0.1),
                                  dtype='bfloat16', device_type='cpu')
    fp16 = fp16_wrapper()
    fp16.load_state_dict(bf16.state_dict())
    fp16.update_params(loss_of(fp16))
    assert fp16.loss_scaler.get_scale() == 2.0 ** 8


def test_amp_picks_bf16_on_a_gpu_that_computes_it(monkeypatch):
    monkeypatch.setattr(torch.cuda, 'is_bf16_supported', lambda including_emulation=True: True)
    assert choose_amp_dtype('cuda') == torch.bfloat16


def test_amp_picks_fp16_on_a_gpu_that_only_emulates_bf16(monkeypatch):
    monkeypatch.setattr(torch.cuda, 'is_bf16_supported', lambda including_emulation=True: including_emulation)
    assert choose_amp_dtype('cuda') == torch.float16


def test_amp_picks_bf16_on_the_cpu():
    assert choose_amp_dtype('cpu') == torch.bfloat16


def pretend_a_gpu(monkeypatch, native_bf16: bool) -> None:
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 1)  # mmengine's logger asks
    monkeypatch.setattr(torch.cuda, 'is_bf16_supported', lambda including_emulation=True: native_bf16)


def test_the_log_says_fp16_and_why_on_a_gpu_without_bf16(monkeypatch, capsys):
    pretend_a_gpu(monkeypatch, native_bf16=False)
    read_log = log_from_here(capsys)
    wrapper = GuardedAmpOptimWrapper(optimizer=torch.optim.SGD(torch.nn.Linear(3, 1).parameters(), lr=0.1))
    assert wrapper.cast_dtype == torch.float16 and wrapper.loss_scaler.is_enabled()
    assert 'fp16 autocast on cuda (this GPU has no native bf16' in read_log()


def test_the_log_says_bf16_without_loss_scaling_on_a_gpu_with_bf16(monkeypatch, capsys):
    pretend_a_gpu(monkeypatch, native_bf16=True)
    read_log = log_from_here(capsys)
    wrapper = GuardedAmpOptimWrapper(optimizer=torch.optim.SGD(torch.nn.Linear(3, 1).parameters(), lr=0.1))
    assert wrapper.cast_dtype == torch.bfloat16 and not wrapper.loss_scaler.is_enabled()
    assert 'bf16 autocast on cuda, no loss scaling' in read_log()


def test_an_unsupported_dtype_is_refused_with_the_choices():
    with pytest.raises(ValueError, match=r"one of \('float16', 'bfloat16'\) or None"):
        GuardedAmpOptimWrapper(optimizer=torch.optim.SGD(torch.nn.Linear(3, 1).parameters(), lr=0.1),
                               dtype='float32', device_type='cpu')


@HOOKS.register_module()
class PoisonHeadHook(Hook):
    """Writes NaN into a trainable weight before ``at_iteration``: every later loss and gradient is NaN."""

    def __init__(self, at_iteration: int) -> None:
        self.at_iteration = at_iteration

    def before_train_iter(self, runner, batch_idx, data_batch=None) -> None:
        if runner.iter + 1 == self.at_iteration:
            with torch.no_grad():
                runner.model.decode_head.conv_seg.weight.fill_(float('nan'))


def test_an_fp16_runner_whose_loss_diverges_stops_naming_the_iteration(ade_root, tmp_path):
    cfg = tiny_config(ade_root, str(tmp_path / 'work'), max_iters=8, checkpoint_interval=8)
    cfg.optim_wrapper.update(type='GuardedAmpOptimWrapper', dtype='float16', device_type='cpu',
                             loss_scale=dict(init_scale=2.0 ** 8), max_consecutive_skips=3)
    cfg.custom_hooks.append(dict(type='PoisonHeadHook', at_iteration=3))
    runner = Runner.from_cfg(cfg)
    with pytest.raises(FloatingPointError, match=r'iteration 5: 3 consecutive steps had inf/NaN.*'
                                                 r'last applied step was iteration 2'):
        runner.train()
