"""SNELLALinear: forward semantics, checkpointing equivalence, merge, state and argument errors."""
import pytest
import torch
from torch import nn

from dispatch_counter import DispatchCounter
from snella_seg.snella import SNELLALinear, SparseKernelDelta
from snella_seg.snella.kernels import kernel_matrix


def make_layer(kernel='snella', sparsity=0.3, mask='magnitude', checkpoint=True, split=1, seed=0, **kwargs):
    torch.manual_seed(seed)
    return SNELLALinear(nn.Linear(12, 18), rank=4, kernel=kernel, sparsity=sparsity, mask=mask,
                        checkpoint=checkpoint, split=split, **kwargs)


@pytest.mark.parametrize('kernel', ['linear', 'snell', 'snella'])
@pytest.mark.parametrize('mask', ['magnitude', 'binary'])
@pytest.mark.parametrize('split', [1, 3])
def test_forward_is_base_plus_delta(kernel, mask, split):
    layer = make_layer(kernel, 0.4, mask, split=split)
    if kernel == 'linear':
        nn.init.normal_(layer.deltas[0].out_factors)  # make LoRA's update nonzero
    x = torch.randn(2, 5, 12)
    expected = layer.base(x) + x @ layer.delta_weight().T
    assert torch.allclose(layer(x), expected, atol=1e-5)


def test_factor_shapes_and_parameter_names():
    layer = make_layer()
    assert layer.in_factors.shape == (2, 12, 2)
    assert layer.out_factors.shape == (2, 18, 2)
    names = {n for n, p in layer.named_parameters() if p.requires_grad}
    assert names == {'deltas.0.in_factors', 'deltas.0.out_factors', 'deltas.0.alpha', 'deltas.0.gamma',
                     'deltas.0.beta'}
    assert not any(p.requires_grad for p in layer.base.parameters())


def test_snella_delta_nonzero_at_init_and_lora_zero():
    assert make_layer('snella').delta_weight().abs().sum() > 0
    assert make_layer('linear', 0.0).delta_weight().abs().sum() == 0


def test_snell_at_zero_sparsity_is_plain_dense_kernel():
    layer = make_layer('snell', 0.0)
    d = layer.deltas[0]
    assert torch.allclose(layer.delta_weight(), kernel_matrix('snell', d.in_factors, d.out_factors).T)


@pytest.mark.parametrize('kernel', ['snell', 'snella', 'linear'])
@pytest.mark.parametrize('split', [1, 3])
def test_checkpointing_gives_identical_outputs_and_gradients(kernel, split):
    results = []
    for checkpoint in (True, False):
        layer = make_layer(kernel, 0.5, checkpoint=checkpoint, split=split, seed=3)
        if kernel == 'linear':
            nn.init.normal_(layer.deltas[0].out_factors)
        x = torch.randn(4, 12, requires_grad=True, generator=torch.Generator().manual_seed(1))
        y = layer(x)
        (y * torch.arange(y.numel()).view_as(y).float().sin()).sum().backward()
        results.append((y.detach(), x.grad, [p.grad for p in layer.factor_parameters()]))
    (y1, gx1, gp1), (y2, gx2, gp2) = results
    assert torch.equal(y1, y2)
    assert torch.allclose(gx1, gx2, atol=1e-6, rtol=1e-5)
    for a, b in zip(gp1, gp2):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-5)


def test_checkpointed_layer_does_not_keep_dense_delta_for_backward():
    """Only x and the factors may be saved: no (out x in) tensor besides the frozen base weight."""
    layer = make_layer(sparsity=0.5)
    x = torch.randn(3, 12)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = layer(x)
    dense = [t for t in saved if t is not None and t.numel() >= 18 * 12]
    assert all(t.data_ptr() == layer.base.weight.data_ptr() for t in dense)
    y.sum().backward()

    unchecked = make_layer(sparsity=0.5, checkpoint=False)
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        unchecked(x)
    assert any(t.numel() >= 18 * 12 and t.data_ptr() != unchecked.base.weight.data_ptr() for t in saved)


@pytest.mark.parametrize('split', [1, 3])
def test_checkpointed_backward_copies_no_dense_matrix_beyond_the_rebuilds_layout(split):
    """Backward rebuilds each update's ΔW with one transposed copy (its layout for W0 + ΔW) and nothing more: the
    weight gradient arrives in the kernels' layout, and W0 is not written into a view of ΔW, which would turn
    autograd's backward of that view into a full new matrix (as_strided)."""
    layer = SNELLALinear(nn.Linear(40, 30 * split), rank=4, sparsity=0.5, split=split)
    y = layer(torch.randn(5, 40))
    with DispatchCounter() as counter:
        y.sum().backward()
    assert counter.counts['aten::clone'] == split, counter.counts
    assert counter.counts['aten::as_strided'] == counter.counts['aten::new_zeros'] == 0, counter.counts


def test_checkpointed_layer_matches_under_bf16_autocast():
    layer = make_layer(sparsity=0.5)
    x = torch.randn(3, 12)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        y = layer(x)
    y.float().sum().backward()
    assert y.dtype == torch.bfloat16
    assert all(torch.isfinite(p.grad).all() for p in layer.factor_parameters())


def test_merge_equals_unmerged():
    layer = make_layer(sparsity=0.6, split=3).eval()
    x = torch.randn(2, 7, 12)
    merged = layer.merge()
    assert type(merged) is nn.Linear
    assert torch.allclose(merged(x), layer(x), atol=1e-5)


def test_sparsity_is_saved_in_state_dict_and_reloads():
    layer = make_layer(sparsity=0.25)
    layer.deltas[0].sparsity.fill_(0.8)
    other = make_layer(sparsity=0.0, seed=5)
    other.load_state_dict(layer.state_dict())
    assert float(other.sparsity) == pytest.approx(0.8)
    x = torch.randn(2, 12)
    assert torch.equal(other(x), layer(x))


def test_plain_linear_state_dict_loads_into_base():
    linear = nn.Linear(12, 18)
    layer = make_layer()
    missing, unexpected = layer.load_state_dict(linear.state_dict(), strict=False)
    assert not unexpected
    assert torch.equal(layer.base.weight, linear.weight)


def test_dropout_and_drop_path_only_in_training():
    layer = make_layer(dropout=0.5, drop_path=0.5)
    x = torch.randn(16, 12)
    layer.eval()
    assert torch.allclose(layer(x), layer.base(x) + x @ layer.delta_weight().T, atol=1e-5)
    layer.train()
    torch.manual_seed(0)
    y = layer(x)
    dropped = torch.isclose(y, layer.base(x), atol=1e-6).all(dim=1)
    assert dropped.any() and not dropped.all()  # whole samples lose the branch, others keep it


@pytest.mark.parametrize('kwargs, message', [
    (dict(rank=0), 'rank'), (dict(rank=3), 'divisible'), (dict(sparsity=1.0), 'sparsity'),
    (dict(sparsity=-0.1), 'sparsity'), (dict(kernel='rbf'), 'unknown kernel'), (dict(mask='soft'), 'unknown mask'),
])
def test_bad_arguments_are_clear_errors(kwargs, message):
    args = dict(rank=4, kernel='snella', sparsity=0.0, mask='magnitude')
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        SNELLALinear(nn.Linear(4, 4), **args)


def test_linear_kernel_allows_odd_rank():
    assert SNELLALinear(nn.Linear(4, 4), rank=3, kernel='linear').in_factors.shape == (1, 4, 3)


def test_backward_reuses_the_forward_selection(monkeypatch):
    """The threshold selection is the costly part of the mask: backward must not repeat it."""
    import snella_seg.snella.layer as layer_module
    calls = []
    original = layer_module.selection_threshold
    monkeypatch.setattr(layer_module, 'selection_threshold', lambda *a: calls.append(1) or original(*a))
    layer = make_layer(sparsity=0.5, split=3)
    y = layer(torch.randn(3, 12))
    assert len(calls) == 3
    y.sum().backward()
    assert len(calls) == 3


def test_sparsity_value_reads_the_buffer_only_after_an_outside_write():
    from dispatch_counter import DispatchCounter
    delta = SparseKernelDelta(8, 6, rank=4, sparsity=0.25)
    delta.set_sparsity(0.5)
    with DispatchCounter() as counter:
        assert delta.sparsity_value == 0.5
    assert counter.host_syncs == 0
    delta.load_state_dict({**delta.state_dict(), 'sparsity': torch.tensor(0.75)})
    with DispatchCounter() as counter:
        assert delta.sparsity_value == 0.75
        assert delta.sparsity_value == 0.75
    assert counter.host_syncs == 1


def test_sparsity_value_follows_the_buffer_when_the_module_moves():
    delta = SparseKernelDelta(8, 6, rank=4, sparsity=0.25).double()
    delta.sparsity.fill_(0.5)
    assert delta.sparsity_value == 0.5


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_the_host_copy_of_the_sparsity_is_the_value_its_buffer_holds(dtype):
    """A resumed run and tools/test.py read the buffer back: an unrounded host copy could keep one entry more."""
    from snella_seg.snella.layer import set_sparsities
    delta = SparseKernelDelta(8, 6, rank=4).to(dtype)
    for value in (0.7, 0.123456789, 1 / 3):
        delta.set_sparsity(value)
        assert delta.sparsity_value == float(delta.sparsity)
        set_sparsities([delta], [value])
        assert delta.sparsity_value == float(delta.sparsity)


def test_set_sparsities_sets_every_update_with_one_copy_and_no_sync():
    from dispatch_counter import DispatchCounter
    from snella_seg.snella.layer import set_sparsities
    updates = [SparseKernelDelta(8, 6, rank=4) for _ in range(6)]
    values = [0.1 * i for i in range(6)]
    with DispatchCounter() as counter:
        set_sparsities(updates, values)
    assert counter.host_syncs == 0 and counter.counts['aten::_foreach_copy_'] == 1
    assert [u.sparsity_value for u in updates] == [float(u.sparsity) for u in updates]
    assert [u.sparsity_value for u in updates] == pytest.approx(values)


def test_set_sparsities_refuses_a_count_mismatch():
    from snella_seg.snella.layer import set_sparsities
    with pytest.raises(ValueError, match='2 sparsities for 1 updates'):
        set_sparsities([SparseKernelDelta(8, 6, rank=4)], [0.1, 0.2])
