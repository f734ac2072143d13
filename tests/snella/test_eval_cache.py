"""SNELLALinear's eval cache: one ``W0 + ΔW`` per parameter and sparsity version, reused by every eval forward without
gradient (validation, sliding-window crops), with the values of the uncached path and of the merged model."""
import copy
import pickle

import pytest
import torch

from snella_seg.snella import SNELLALinear, SparseKernelDelta, absorb_activation, inject_snella, merge_snella

from tests.helpers.tiny_vit import ALL_TARGETS, MLP, TinyViT


@pytest.fixture
def builds(monkeypatch):
    """Every ΔW computed, one entry per update: the cache is what keeps this list short."""
    calls = []
    compute_delta = SparseKernelDelta.compute_delta

    def counted(self, *args, **kwargs):
        calls.append(self)
        return compute_delta(self, *args, **kwargs)
    monkeypatch.setattr(SparseKernelDelta, 'compute_delta', counted)
    return calls


def make_layer(kernel='snella', sparsity=0.3, checkpoint=True, split=3):
    torch.manual_seed(0)
    layer = SNELLALinear(torch.nn.Linear(8, 12), rank=4, kernel=kernel, sparsity=sparsity, checkpoint=checkpoint,
                         split=split)
    for delta in layer.deltas:
        torch.nn.init.normal_(delta.out_factors)  # LoRA's zero init would hide a wrong ΔW
    return layer.eval()


def uncached(module, x):
    """The output of the path without cache: the same eval module, with gradient enabled."""
    with torch.enable_grad():
        return module(x).detach()


def cached(module, x):
    with torch.no_grad():
        return module(x)


def test_eval_forwards_build_each_delta_once(builds):
    layer = make_layer()
    for _ in range(5):
        cached(layer, torch.randn(2, 5, 8))
    assert len(builds) == 3  # one per update of the split layer


@pytest.mark.parametrize('checkpoint', [True, False])
@pytest.mark.parametrize('kernel, sparsity', [('snella', 0.0), ('snella', 0.3), ('snell', 0.3), ('linear', 0.3)])
def test_cached_output_equals_uncached_output(kernel, sparsity, checkpoint):
    layer = make_layer(kernel, sparsity, checkpoint)
    x = torch.randn(2, 5, 8)
    expected = uncached(layer, x)
    cached(layer, x)
    assert torch.equal(cached(layer, x), expected)


def test_cached_output_equals_uncached_under_bf16_autocast():
    layer = make_layer()
    x = torch.randn(2, 5, 8)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        expected = uncached(layer, x)
        cached(layer, x)
        assert torch.equal(cached(layer, x), expected)


def test_cached_model_output_equals_merged_model_output():
    torch.manual_seed(0)
    vit, mlp = TinyViT(), MLP()
    inject_snella(vit, ALL_TARGETS, rank=4, sparsity=0.3)
    inject_snella(mlp, [r'fc\d'], rank=4, sparsity=0.3)
    absorb_activation(mlp.norm, mlp.fc1)
    absorb_activation(mlp.act, mlp.fc2)
    for model, x in ((vit, torch.randn(2, 6, 4)), (mlp, torch.randn(2, 5, 8))):
        model.eval()
        cached(model, x)
        merged = merge_snella(copy.deepcopy(model))
        assert torch.equal(cached(model, x), cached(merged, x))


def test_low_rank_layers_never_build_a_delta(builds):
    layer = make_layer('linear', sparsity=0.0)
    cached(layer, torch.randn(2, 5, 8))
    assert builds == [] and layer._eval_weight is None


@pytest.mark.parametrize('optimizer_options', [dict(), dict(foreach=True), dict(fused=True)])
def test_a_training_step_rebuilds_the_cache(builds, optimizer_options):
    layer = make_layer()
    x = torch.randn(2, 5, 8)
    before = cached(layer, x)
    optimizer = torch.optim.AdamW(layer.factor_parameters(), lr=0.1, **optimizer_options)
    layer.train()
    layer(x).square().sum().backward()
    optimizer.step()  # a fused step writes without a version bump: train() already dropped the cache
    layer.eval()
    built = len(builds)
    after = cached(layer, x)
    assert len(builds) == built + 3
    assert not torch.equal(after, before) and torch.equal(after, uncached(layer, x))


def test_a_sparsity_change_rebuilds_the_cache(builds):
    layer = make_layer()
    x = torch.randn(2, 5, 8)
    before = cached(layer, x)
    layer.deltas[1].set_sparsity(0.6)
    after = cached(layer, x)
    assert len(builds) == 6
    assert not torch.equal(after, before) and torch.equal(after, uncached(layer, x))


def test_load_state_dict_rebuilds_the_cache():
    layer, other = make_layer(), make_layer()
    with torch.no_grad():
        for delta in other.deltas:
            delta.in_factors.mul_(2.0)
            delta.set_sparsity(0.5)
    x = torch.randn(2, 5, 8)
    cached(layer, x)
    layer.load_state_dict(other.state_dict())
    assert torch.equal(cached(layer, x), cached(other, x))


def test_a_moved_layer_rebuilds_the_cache():
    layer = make_layer()
    cached(layer, torch.randn(2, 5, 8))
    layer.double()  # same parameter objects, same versions, new data
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    assert cached(layer, x).dtype == torch.float64
    assert torch.equal(cached(layer, x), uncached(layer, x))


def test_a_parameter_given_new_data_rebuilds_the_cache():
    layer = make_layer()
    x = torch.randn(2, 5, 8)
    before = cached(layer, x)
    factors = layer.deltas[0].in_factors
    factors.data = factors.data * 2.0  # same parameter object, same version, other memory
    after = cached(layer, x)
    assert not torch.equal(after, before) and torch.equal(after, uncached(layer, x))


def test_sliding_window_crops_share_one_build(builds):
    layer = make_layer()
    image = torch.randn(1, 12, 12, 8)  # a token grid, cut into overlapping 8x8 windows as slide inference does
    crops = [image[:, top:top + 8, left:left + 8] for top in (0, 4) for left in (0, 4)]
    outputs = [cached(layer, crop) for crop in crops]
    assert len(builds) == 3
    assert all(torch.equal(out, uncached(layer, crop)) for out, crop in zip(outputs, crops))


def test_training_mode_and_gradient_forwards_drop_the_cache():
    layer = make_layer()
    cached(layer, torch.randn(2, 5, 8))
    layer.train()
    assert layer._eval_weight is None
    layer.eval()
    cached(layer, torch.randn(2, 5, 8))
    out = layer(torch.randn(2, 5, 8))  # eval mode with gradient: the ordinary path, which trains the factors
    assert layer._eval_weight is None
    out.sum().backward()
    assert layer.deltas[0].in_factors.grad is not None


def test_cache_stays_out_of_state_dict_copies_and_pickles():
    layer = make_layer()
    keys = set(layer.state_dict())
    cached(layer, torch.randn(2, 5, 8))
    assert layer._eval_weight is not None
    assert set(layer.state_dict()) == keys
    assert copy.deepcopy(layer)._eval_weight is None
    assert pickle.loads(pickle.dumps(layer))._eval_weight is None
    assert layer._eval_weight is not None  # the original keeps its own
