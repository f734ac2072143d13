"""FiniteTrainingHook stops a step with NaN or infinite gradients, in a few operations whatever the model's size,
without touching the gradients of a healthy step."""
from types import SimpleNamespace

import pytest
import torch

from dispatch_counter import DispatchCounter
from snella_seg.engine import FiniteTrainingHook
from snella_seg.engine.hooks.hook_utils import non_finite_flag
from snella_seg.snella import inject_snella

from tests.helpers.tiny_vit import ALL_TARGETS, TinyViT


def guarded_optimizer(depth: int = 2):
    """An SGD optimizer over a tiny adapted ViT, its gradients computed, and a FiniteTrainingHook watching it."""
    torch.manual_seed(0)
    model = TinyViT(depth=depth)
    inject_snella(model, ALL_TARGETS, rank=4)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.0)
    model(torch.randn(2, 6, 4)).sum().backward()
    hook = FiniteTrainingHook()
    runner = SimpleNamespace(optim_wrapper=SimpleNamespace(optimizer=optimizer), iter=6)
    hook.before_train(runner)
    hook.before_train_iter(runner, 6)
    return optimizer, hook


@pytest.mark.parametrize('bad', [float('nan'), float('inf'), -float('inf')])
def test_a_non_finite_gradient_stops_the_step_naming_the_iteration(bad):
    optimizer, _ = guarded_optimizer()
    optimizer.param_groups[0]['params'][-1].grad.view(-1)[-1] = bad
    with pytest.raises(FloatingPointError, match='non-finite gradients at iteration 7'):
        optimizer.step()


def test_the_largest_finite_gradients_pass_in_every_float_type():
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        assert not non_finite_flag([torch.full((1000,), torch.finfo(dtype).max, dtype=dtype)])


def test_a_non_finite_entry_is_found_among_tensors_of_several_dtypes():
    healthy = [torch.ones(300, dtype=torch.bfloat16), torch.ones(300)]
    sick = torch.ones(300, dtype=torch.float16)
    sick[123] = float('nan')
    assert not non_finite_flag(healthy) and non_finite_flag(healthy + [sick])


def test_a_healthy_step_leaves_every_gradient_bit_for_bit_as_it_was():
    optimizer, _ = guarded_optimizer()
    params = optimizer.param_groups[0]['params']
    before = [p.grad.clone() for p in params]
    optimizer.step()
    assert all(torch.equal(p.grad, grad) for p, grad in zip(params, before))


def guard_operations(depth: int) -> DispatchCounter:
    optimizer, hook = guarded_optimizer(depth)
    with DispatchCounter() as counter:
        hook._check_gradients(optimizer)
    return counter


def test_the_guard_costs_as_many_operations_at_8_blocks_as_at_4_and_one_host_sync():
    counters = {depth: guard_operations(depth) for depth in (4, 8)}
    assert counters[8].total <= 1.2 * counters[4].total, {depth: c.total for depth, c in counters.items()}
    assert counters[4].host_syncs == counters[8].host_syncs == 1
