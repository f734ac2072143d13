"""WarmupPolyLR: mmengine's LinearLR + PolyLR pair, with the warm-up as a fraction of a schedule that ends at
the Runner's max_iters."""
import pytest
import torch
from mmengine.optim.scheduler import LinearLR, PolyLR

from snella_seg.engine import WarmupPolyLR

from tests.helpers.schedulers import learning_rates


def optimizer_with_two_groups() -> torch.optim.Optimizer:
    return torch.optim.SGD([{'params': [torch.nn.Parameter(torch.zeros(1))], 'lr': 3e-4},
                            {'params': [torch.nn.Parameter(torch.zeros(1))], 'lr': 3e-3}])


def test_values_equal_mmengines_linear_warmup_then_poly_decay():
    old_optimizer, new_optimizer = optimizer_with_two_groups(), optimizer_with_two_groups()
    old = learning_rates(old_optimizer, [
        LinearLR(old_optimizer, start_factor=1e-3, by_epoch=False, begin=0, end=40),
        PolyLR(old_optimizer, eta_min=1e-6, power=0.9, begin=40, end=400, by_epoch=False)], 400)
    new = learning_rates(new_optimizer, [
        WarmupPolyLR(new_optimizer, warmup=0.1, start_factor=1e-3, power=0.9, eta_min=1e-6, end=400)], 400)
    for old_step, new_step in zip(old, new):
        assert new_step == pytest.approx(old_step, rel=1e-9)


def test_a_fraction_warmup_scales_with_the_schedule_and_an_int_warmup_does_not():
    assert WarmupPolyLR(optimizer_with_two_groups(), warmup=0.1, end=60).warmup_steps == 6
    assert WarmupPolyLR(optimizer_with_two_groups(), warmup=0.1, end=400).warmup_steps == 40
    assert WarmupPolyLR(optimizer_with_two_groups(), warmup=40, end=60).warmup_steps == 40


def test_a_short_schedule_warms_up_and_decays_to_eta_min_within_it():
    optimizer = optimizer_with_two_groups()
    rates = learning_rates(optimizer, [WarmupPolyLR(optimizer, warmup=0.009375, end=4)], 4)
    assert [group0 for group0, _ in rates] == pytest.approx([3e-4, 2e-4, 1e-4, 0.0])
    assert all(group1 == pytest.approx(10 * group0) for group0, group1 in rates)


def test_resuming_from_its_state_continues_the_same_values():
    optimizer = optimizer_with_two_groups()
    expected = learning_rates(optimizer, [WarmupPolyLR(optimizer, warmup=0.1, end=100)], 100)
    first = optimizer_with_two_groups()
    interrupted = WarmupPolyLR(first, warmup=0.1, end=100)
    learning_rates(first, [interrupted], 30)
    second = optimizer_with_two_groups()  # as the Runner resumes: build, then load the optimizer and the scheduler
    resumed = WarmupPolyLR(second, warmup=0.1, end=100)
    second.load_state_dict(first.state_dict())
    resumed.load_state_dict(interrupted.state_dict())
    resumed_rates = learning_rates(second, [resumed], 70)
    for got, want in zip(resumed_rates, expected[30:]):
        assert got == pytest.approx(want)


@pytest.mark.parametrize('kwargs, message', [
    (dict(), 'leave end out of the config'), (dict(end=10, warmup=10), 'leaves nothing'),
    (dict(end=10, warmup=1.0), 'ambiguous'), (dict(end=10, start_factor=2.0), 'start_factor'),
    (dict(begin=5, end=5), 'end > begin'),
])
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        WarmupPolyLR(optimizer_with_two_groups(), **kwargs)
