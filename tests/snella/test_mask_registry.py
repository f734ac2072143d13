"""A mask added from outside the package (one registry entry) trains through both layer paths, merges and is
checked like the built-in ones."""
import pytest
import torch
from torch import nn

import snella_seg.snella.layer as layer_module
from snella_seg.snella import (MASKS, Mask, SNELLAConfig, SNELLALinear, SparseKernelDelta, get_mask, inject_snella,
                               merge_snella, register_mask, sparsify)
from snella_seg.snella.masks import binary_scale, kept
from tests.helpers.tiny_vit import ALL_TARGETS, TinyViT


def soft_scale(magnitude, threshold):
    """A test mask: kept entries weighted by how far their magnitude clears the threshold, saturating at 1."""
    if threshold is None:
        return None
    return torch.sigmoid((magnitude - threshold) * 50).mul_(kept(magnitude, threshold))


@pytest.fixture
def registered():
    """Registers a straight-through and a soft test mask for one test and removes them after it."""
    masks = [register_mask(Mask('test_straight_through', binary_scale, straight_through=True)),
             register_mask(Mask('test_soft', soft_scale, reuse_threshold=False))]
    yield masks
    for mask in masks:
        MASKS.pop(mask.name)


def make_layer(kernel, mask, sparsity=0.5, checkpoint=True, split=3):
    torch.manual_seed(0)
    return SNELLALinear(nn.Linear(12, 18), rank=4, kernel=kernel, sparsity=sparsity, mask=mask,
                        checkpoint=checkpoint, split=split)


def train(layer, steps=5):
    x, target = torch.randn(16, 12, generator=torch.Generator().manual_seed(1)), torch.zeros(16, 18)
    optimizer = torch.optim.SGD(layer.factor_parameters(), lr=0.05)
    losses = []
    for _ in range(steps):
        loss = nn.functional.mse_loss(layer(x), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize('mask', ['test_straight_through', 'test_soft'])
@pytest.mark.parametrize('kernel', ['snella', 'linear'])  # the fused distance kernel, and sparsify after autograd
def test_registered_mask_trains_alike_through_the_fused_and_the_plain_layer(registered, kernel, mask):
    fused, plain = make_layer(kernel, mask, checkpoint=True), make_layer(kernel, mask, checkpoint=False)
    if kernel == 'linear':
        for layer in (fused, plain):
            for update in layer.deltas:
                nn.init.normal_(update.out_factors, generator=torch.Generator().manual_seed(2))
    fused_losses, plain_losses = train(fused), train(plain)
    assert fused_losses[-1] < fused_losses[0]
    assert fused_losses == pytest.approx(plain_losses, rel=1e-5)
    for fused_parameter, plain_parameter in zip(fused.factor_parameters(), plain.factor_parameters()):
        assert torch.allclose(fused_parameter, plain_parameter, atol=1e-6)


@pytest.mark.parametrize('kernel', ['snella', 'snell', 'linear'])
def test_straight_through_mask_zeroes_as_binary_does_and_passes_the_unmasked_gradient(registered, kernel):
    """Its ΔW is binary's; its factor gradients are those of the unmasked matrix (at s = 0 nothing is zeroed)."""
    upstream = torch.randn(18, 12, generator=torch.Generator().manual_seed(4))
    results = {}
    for mask, sparsity in (('test_straight_through', 0.6), ('binary', 0.6), ('test_straight_through', 0.0)):
        torch.manual_seed(0)
        update = SparseKernelDelta(12, 18, rank=4, kernel=kernel, sparsity=sparsity, mask=mask)
        nn.init.normal_(update.out_factors, generator=torch.Generator().manual_seed(2))
        delta = update.delta_weight()
        results[mask, sparsity] = delta.detach(), torch.autograd.grad(delta, update.factor_parameters(), upstream)
    (masked, masked_grads), (binary, binary_grads) = results['test_straight_through', 0.6], results['binary', 0.6]
    assert torch.equal(masked, binary) and (masked == 0).any()
    for masked_grad, binary_grad, unmasked_grad in zip(masked_grads, binary_grads,
                                                       results['test_straight_through', 0.0][1]):
        assert torch.allclose(masked_grad, unmasked_grad, rtol=1e-5, atol=1e-6)
        assert not torch.allclose(binary_grad, unmasked_grad, rtol=1e-5, atol=1e-6)


def test_sparsify_applies_a_registered_mask_by_name(registered):
    matrix = torch.tensor([[0.5, -2.0], [1.0, -0.1]], requires_grad=True)
    masked = sparsify(matrix, 0.5, 'test_straight_through')
    assert torch.equal(masked, torch.tensor([[0.0, -2.0], [1.0, 0.0]]))
    masked.sum().backward()
    assert torch.equal(matrix.grad, torch.ones(2, 2))


@pytest.mark.parametrize('mask, selections', [('magnitude', 3), ('test_soft', 6)])
def test_a_mask_may_select_again_in_backward(registered, monkeypatch, mask, selections):
    """``reuse_threshold=False``: the fused layer's backward selects from its rebuilt ΔW instead of reusing."""
    calls = []
    original = layer_module.selection_threshold
    monkeypatch.setattr(layer_module, 'selection_threshold', lambda *a: calls.append(1) or original(*a))
    make_layer('snella', mask)(torch.randn(3, 12)).sum().backward()
    assert len(calls) == selections


@pytest.mark.parametrize('mask', ['test_straight_through', 'test_soft'])
def test_registered_mask_merges_into_plain_linear_layers(registered, mask):
    model = TinyViT()
    inject_snella(model, ALL_TARGETS, rank=4, sparsity=0.5, mask=mask)
    train_step = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    x = torch.randn(2, 6, 4, generator=torch.Generator().manual_seed(3))
    model(x).square().mean().backward()
    train_step.step()
    model.eval()
    with torch.no_grad():
        expected = model(x)
        merge_snella(model)
        assert not any(isinstance(m, SNELLALinear) for m in model.modules())
        assert torch.allclose(model(x), expected, atol=1e-5)


def test_config_accepts_a_registered_mask_and_refuses_unknown_ones(registered):
    assert SNELLAConfig(targets=['fc'], rank=4, mask='test_soft').mask == 'test_soft'
    message = r"unknown mask 'test_missing'; choose one of \(.*'test_soft'.*register_mask"
    for build in (lambda: SNELLAConfig(targets=['fc'], rank=4, mask='test_missing'),
                  lambda: SparseKernelDelta(4, 4, rank=4, mask='test_missing'),
                  lambda: sparsify(torch.ones(2, 2), 0.5, 'test_missing')):
        with pytest.raises(ValueError, match=message):
            build()


def test_a_taken_mask_name_is_refused_unless_replacing(registered):
    with pytest.raises(ValueError, match="'binary' is already registered.*replace=True"):
        register_mask(Mask('binary', binary_scale))
    assert register_mask(get_mask('binary'), replace=True) is MASKS['binary']
