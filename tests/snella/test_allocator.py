"""The bi-level allocator: schedule, budget split, importance EMAs, state, and a toy training run."""
import pytest
import torch
from torch import nn

from dispatch_counter import DispatchCounter
from snella_seg.snella import BiLevelAllocator, inject_snella
from snella_seg.snella.allocator import MIN_SHRINK_REALLOCATIONS, budget_at, split_budget, steps_of

from tests.helpers.tiny_vit import ALL_TARGETS, TinyViT


def test_cubic_schedule_by_hand():
    # T=10, warm-ups 2 and 3: flat V0 up to 2, VT after 7, cubic in between over 5 steps
    assert budget_at(2, 10, 100, 20, 2, 3) == 100
    assert budget_at(8, 10, 100, 20, 2, 3) == 20
    assert budget_at(4, 10, 100, 20, 2, 3) == pytest.approx(20 + 80 * (1 - 2 / 5) ** 3)
    assert budget_at(7, 10, 100, 20, 2, 3) == pytest.approx(20)
    assert budget_at(10, 10, 100, 20) == pytest.approx(20)


def test_split_budget_proportional_with_floors_and_leftover():
    # 10 * [0.5, 0.3, 0.2] = [5, 3, 2]
    assert split_budget(10, [5.0, 3.0, 2.0], [100, 100, 100]) == [5, 3, 2]
    # floors leave 1: floor(7*.5)=3, floor(7*.3)=2, floor(7*.2)=1 -> leftover 1 to the best scorer
    assert split_budget(7, [5.0, 3.0, 2.0], [100, 100, 100]) == [4, 2, 1]


def test_split_budget_caps_and_redistributes_to_open_layers():
    # first pass: [min(90, 10), 9, 1] -> leftover 80, to the open layers 1 and 2 by score (9:1): +72, +8
    assert split_budget(100, [90.0, 9.0, 1.0], [10, 1000, 1000]) == [10, 81, 9]


def test_split_budget_uniform_when_all_scores_zero_and_capped_by_total():
    assert split_budget(9, [0.0, 0.0, 0.0], [10, 10, 10]) == [3, 3, 3]
    assert split_budget(50, [1.0, 1.0], [10, 20]) == [10, 20]


def make_allocated_model(depth: int = 2, **kwargs):
    torch.manual_seed(0)
    model = TinyViT(depth=depth)
    inject_snella(model, ALL_TARGETS, rank=4)
    args = dict(target_ratio=0.6, total_steps=20)
    args.update(kwargs)
    return model, BiLevelAllocator(model, **args)


def test_importance_ema_by_hand():
    model, alloc = make_allocated_model(beta1=0.5, beta2=0.5)
    layer = alloc.layers['blocks.0.mlp.fc1.deltas.0']
    for p in model.parameters():
        p.grad = torch.zeros_like(p) if p.requires_grad else None
    layer.in_factors.grad = torch.full_like(layer.in_factors, 2.0)
    with torch.no_grad():
        layer.in_factors.fill_(-3.0)
    assert alloc.update_importance()
    bar, unc = alloc.sensitivity['blocks.0.mlp.fc1.deltas.0'][0], alloc.uncertainty['blocks.0.mlp.fc1.deltas.0'][0]
    # I = 6; I_bar = 0.5*0 + 0.5*6 = 3; U = 0.5*0 + 0.5*|6-3| = 1.5
    assert torch.allclose(bar, torch.full_like(bar, 3.0)) and torch.allclose(unc, torch.full_like(unc, 1.5))
    assert alloc.scores()['blocks.0.mlp.fc1.deltas.0'] == pytest.approx(4.5)
    assert alloc.update_importance()
    # I_bar = 0.5*3 + 0.5*6 = 4.5; U = 0.5*1.5 + 0.5*|6-4.5| = 1.5
    assert torch.allclose(bar, torch.full_like(bar, 4.5)) and torch.allclose(unc, torch.full_like(unc, 1.5))


def test_non_finite_gradients_skip_the_update_and_keep_state():
    model, alloc = make_allocated_model()
    for p in model.parameters():
        if p.requires_grad:
            p.grad = torch.ones_like(p)
    alloc.update_importance()
    before = {k: [t.clone() for t in v] for k, v in alloc.sensitivity.items()}
    next(iter(alloc.layers.values())).out_factors.grad[0, 0, 0] = float('nan')
    assert not alloc.update_importance()
    assert alloc.skipped_updates == 1 and alloc.importance_updates == 1
    for k, v in before.items():
        assert all(torch.equal(a, b) for a, b in zip(v, alloc.sensitivity[k]))


def test_nan_product_counts_as_zero_importance():
    model, alloc = make_allocated_model(beta1=0.0)
    for p in model.parameters():
        if p.requires_grad:
            p.grad = torch.ones_like(p)
    layer = next(iter(alloc.layers.values()))
    with torch.no_grad():
        layer.in_factors[0, 0, 0] = float('nan')  # a NaN factor (not gradient) gives a NaN product
    assert alloc.update_importance()
    assert alloc.sensitivity[next(iter(alloc.layers))][0][0, 0, 0] == 0


def per_tensor_importance_update(alloc, sensitivity, uncertainty):
    """The importance update tensor by tensor, as docs/method.md states it: the reference for the batched one."""
    for name, layer in alloc.layers.items():
        params = alloc._factor_pairs(layer)
        sensitivity.setdefault(name, [torch.zeros_like(p) for p in params])
        uncertainty.setdefault(name, [torch.zeros_like(p) for p in params])
        for p, bar, unc in zip(params, sensitivity[name], uncertainty[name]):
            current = (p.float() * p.grad.float()).abs().nan_to_num(0.0) if p.grad is not None else torch.zeros_like(p)
            bar.mul_(alloc.beta1).add_(current, alpha=1 - alloc.beta1)
            unc.mul_(alloc.beta2).add_((current - bar).abs(), alpha=1 - alloc.beta2)


def test_the_batched_importance_update_equals_the_per_tensor_formula_bit_for_bit():
    model, alloc = make_allocated_model(depth=3)
    layers = list(alloc.layers.values())
    sensitivity, uncertainty = {}, {}
    for step in range(3):  # non-finite factors last: their next backward would give non-finite gradients
        model.zero_grad()
        model(torch.randn(2, 6, 4) * 10 ** step).sum().backward()
        if step == 1:
            layers[1].in_factors.grad = None  # an update the loss did not reach: zero importance
        if step == 2:
            with torch.no_grad():  # non-finite factors: an infinite product is clamped, a NaN one counts as zero
                layers[0].out_factors[0, 0, 0] = float('inf')
                layers[2].in_factors[0, 0, 0] = float('nan')
        assert alloc.update_importance()
        per_tensor_importance_update(alloc, sensitivity, uncertainty)
        for name in alloc.layers:
            for batched, reference in zip(alloc.sensitivity[name] + alloc.uncertainty[name],
                                          sensitivity[name] + uncertainty[name]):
                assert torch.equal(batched, reference), (step, name)


def test_between_steps_the_importance_update_holds_no_memory_beyond_its_averages():
    """Its flat float32 working buffer is as large as all factors together: kept, it would sit in the next step's
    activation peak (at ViT-B 512x512 batch 2 that put SNELLA's peak memory at 0.9304x LoRA's)."""
    model, alloc = make_allocated_model(depth=2)
    factors = alloc._factors()
    for finite in (True, False, True):
        model.zero_grad()
        model(torch.randn(2, 6, 4)).sum().backward()
        if not finite:
            factors[0].grad[0, 0, 0] = float('inf')
        assert alloc.update_importance() == finite
        assert alloc._scratch.untyped_storage().nbytes() == 0
    held = sum(t.untyped_storage().nbytes() for name in alloc.layers
               for t in alloc.sensitivity[name] + alloc.uncertainty[name])
    assert held == 2 * 4 * sum(p.numel() for p in factors)


def test_scores_equal_the_per_layer_means_to_float_rounding():
    model, alloc = make_allocated_model()
    for p in model.parameters():
        if p.requires_grad:
            p.grad = torch.randn_like(p)
    alloc.update_importance()
    alloc.update_importance()
    for name, score in alloc.scores().items():
        means = [(bar * unc).mean() for bar, unc in zip(alloc.sensitivity[name], alloc.uncertainty[name])]
        assert score == pytest.approx(float(sum(means)), rel=1e-6)


def importance_update_operations(depth: int) -> int:
    model, alloc = make_allocated_model(depth=depth)
    model(torch.randn(2, 6, 4)).sum().backward()
    alloc.update_importance()  # the first update creates the EMAs
    with DispatchCounter() as counter:
        assert alloc.update_importance()
    assert counter.host_syncs == 1  # the finite check
    return counter.total


def test_the_importance_update_costs_as_many_operations_at_8_blocks_as_at_4():
    operations = {depth: importance_update_operations(depth) for depth in (4, 8)}
    assert operations[8] <= 1.2 * operations[4], operations


def test_all_scores_come_back_in_one_device_to_host_read():
    model, alloc = make_allocated_model(depth=8)
    model(torch.randn(2, 6, 4)).sum().backward()
    alloc.update_importance()
    with DispatchCounter() as counter:
        scores = alloc.scores()
    assert counter.host_syncs == 1 and len(scores) == len(alloc.layers) == 8 * 6


def test_the_last_reallocation_is_the_final_step_or_the_last_multiple_of_mask_interval():
    assert make_allocated_model(total_steps=100, final_warmup=10)[1].last_reallocation_step() == 100
    assert make_allocated_model(total_steps=105, mask_interval=10)[1].last_reallocation_step() == 100


def test_reallocation_follows_scores_and_budget():
    model, alloc = make_allocated_model(target_ratio=0.5, total_steps=4)
    names = list(alloc.layers)
    for i, name in enumerate(names):  # hand-made scores: later layers matter more
        alloc.sensitivity[name] = [torch.full_like(p, float(i + 1)) for p in alloc._factor_pairs(alloc.layers[name])]
        alloc.uncertainty[name] = [torch.ones_like(p) for p in alloc._factor_pairs(alloc.layers[name])]
    assert alloc.step(4)
    assert alloc.budget == alloc.final_budget
    assert alloc.overall_sparsity() == pytest.approx(0.5, abs=1e-3)
    sparsities = alloc.sparsities()
    assert sparsities[names[0]] > sparsities[names[-1]]


def test_no_reallocation_during_warmup_and_off_interval():
    _, alloc = make_allocated_model(total_steps=100, init_warmup=3, mask_interval=4)
    assert not alloc.step(3)
    assert not alloc.step(5)
    assert alloc.step(8)


def test_integer_warmups_count_iterations_and_float_warmups_are_fractions_of_the_schedule():
    _, by_iterations = make_allocated_model(total_steps=200, init_warmup=5, final_warmup=50)
    _, by_fraction = make_allocated_model(total_steps=200, init_warmup=0.025, final_warmup=0.25)
    assert (by_iterations.init_warmup, by_iterations.final_warmup) == (5, 50)
    assert (by_fraction.init_warmup, by_fraction.final_warmup) == (5, 50)


def test_fractions_are_read_as_written_and_rounded_down():
    assert steps_of('w', 0.29, 100) == 29  # 0.29 * 100 is 28.999999999999996 in binary floating point
    assert steps_of('w', 0.025, 160000) == 4000
    assert steps_of('w', 0.25, 3) == 0
    assert steps_of('w', 0.0, 10) == 0


@pytest.mark.parametrize('value, message', [
    (1.0, r'ambiguous: write an int .*\(w=1\)'), (4000.0, r'ambiguous.*\(w=4000\)'), (-1, '>= 0'),
    (-0.1, '>= 0'), (float('nan'), '>= 0'),
])
def test_warmups_that_are_neither_iterations_nor_fractions_are_refused(value, message):
    with pytest.raises(ValueError, match=message):
        steps_of('w', value, 100)


def test_a_warmup_of_another_type_is_refused():
    with pytest.raises(TypeError, match='int .iterations. or a float in .0, 1.'):
        steps_of('w', '0.5', 100)


@pytest.mark.parametrize('total_steps', [2, 3, 4, 7, 60, 1000])
def test_fraction_warmups_leave_steps_to_shrink_over_in_any_schedule_length(total_steps):
    _, alloc = make_allocated_model(total_steps=total_steps, init_warmup=0.025, final_warmup=0.25)
    assert alloc.init_warmup + alloc.final_warmup < total_steps


def test_fraction_warmups_that_fill_the_schedule_are_refused():
    with pytest.raises(ValueError, match='must stay below 1'):
        make_allocated_model(total_steps=100, init_warmup=0.5, final_warmup=0.5)


def test_mask_interval_is_kept_when_the_budget_shrinks_over_enough_iterations():
    _, alloc = make_allocated_model(total_steps=160000, init_warmup=0.025, final_warmup=0.25, mask_interval=100)
    assert alloc.mask_interval == alloc.requested_mask_interval == 100


def test_a_short_schedule_shortens_mask_interval_so_the_shrinking_budget_is_reallocated():
    _, alloc = make_allocated_model(total_steps=60, init_warmup=0.025, final_warmup=0.25, mask_interval=100)
    assert alloc.requested_mask_interval == 100 and alloc.mask_interval == 4
    shrinking = [step for step in range(alloc.init_warmup + 1, 60 - alloc.final_warmup + 1) if alloc.step(step)]
    assert len(shrinking) >= MIN_SHRINK_REALLOCATIONS


def test_state_round_trip():
    model, alloc = make_allocated_model()
    for p in model.parameters():
        if p.requires_grad:
            p.grad = torch.randn_like(p)
    alloc.update_importance()
    alloc.step(10)
    state = alloc.state_dict()
    other_model, other = make_allocated_model()
    other.load_state_dict(state)
    assert other.sparsities() == alloc.sparsities()
    assert other.budget == alloc.budget and other.importance_updates == 1
    for name in alloc.sensitivity:
        assert all(torch.equal(a, b) for a, b in zip(alloc.sensitivity[name], other.sensitivity[name]))


def test_state_from_other_targets_is_refused():
    _, alloc = make_allocated_model()
    model = TinyViT()
    inject_snella(model, [r'blocks\.\d+\.mlp\.fc1'], rank=4)
    other = BiLevelAllocator(model, 0.5, 10)
    with pytest.raises(ValueError, match='does not fit this model'):
        other.load_state_dict(alloc.state_dict())


@pytest.mark.parametrize('kwargs, message', [
    (dict(target_ratio=1.0), 'target_ratio'), (dict(target_ratio=-0.1), 'target_ratio'),
    (dict(total_steps=5, init_warmup=3, final_warmup=2), 'as fractions of the schedule'),
    (dict(mask_interval=0), 'mask_interval'), (dict(mask_interval=0.5), 'mask_interval'),
    (dict(total_steps=0), 'total_steps'), (dict(init_warmup=2.0), 'init_warmup=2.0 is ambiguous'),
    (dict(init_sparsity=1.2), 'init_sparsity'),
])
def test_bad_arguments(kwargs, message):
    model = TinyViT()
    inject_snella(model, ALL_TARGETS, rank=4)
    args = dict(target_ratio=0.5, total_steps=10)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        BiLevelAllocator(model, **args)


def test_model_without_updates_is_an_error():
    with pytest.raises(ValueError, match='no SNELLA updates'):
        BiLevelAllocator(nn.Linear(2, 2), 0.5, 10)


def test_toy_training_reaches_target_ratio_and_loss_falls():
    torch.manual_seed(0)
    teacher = TinyViT()
    student = TinyViT()
    student.load_state_dict(teacher.state_dict())
    with torch.no_grad():  # the student must adapt its blocks to match a perturbed teacher
        for p in teacher.blocks.parameters():
            p.add_(0.3 * torch.randn_like(p))
    inject_snella(student, ALL_TARGETS, rank=4)
    steps = 60
    alloc = BiLevelAllocator(student, target_ratio=0.7, total_steps=steps, init_warmup=5, final_warmup=10,
                             mask_interval=2)
    optim = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=3e-3)
    data = torch.randn(256, 6, 4)
    with torch.no_grad():
        target = teacher(data)
    losses = []
    for step in range(1, steps + 1):
        idx = torch.randint(0, 256, (32,))
        loss = nn.functional.mse_loss(student(data[idx]), target[idx])
        loss.backward()
        alloc.update_importance()
        optim.step()
        optim.zero_grad()
        alloc.step(step)
        losses.append(loss.item())
    assert alloc.overall_sparsity() == pytest.approx(0.7, abs=1e-3)
    assert sum(losses[-10:]) / 10 < 0.5 * sum(losses[:10]) / 10
    spread = set(round(s, 3) for s in alloc.sparsities().values())
    assert len(spread) > 1  # the competition gave layers different budgets
    assert 'overall sparsity 0.7' in alloc.summary()
