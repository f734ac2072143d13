"""absorb_activation: a SNELLA layer computing the frozen module before it changes nothing but memory."""
import copy

import pytest
import torch
from torch import nn

from snella_seg.snella import SNELLALinear, absorb_activation, inject_snella, merge_snella

from tests.helpers.tiny_vit import MLP


def pair(**layer_kwargs):
    """An adapted MLP and a copy in which fc1 absorbs the norm and fc2 the activation."""
    torch.manual_seed(0)
    plain = MLP()
    with torch.no_grad():
        plain.norm.weight.uniform_(0.5, 1.5)
        plain.norm.bias.normal_()
    inject_snella(plain, [r'fc\d'], rank=4, **layer_kwargs)
    for layer in (plain.fc1, plain.fc2):
        for delta in layer.deltas:
            nn.init.normal_(delta.out_factors)  # LoRA's zero init would hide differences
    absorbed = copy.deepcopy(plain)
    absorb_activation(absorbed.norm, absorbed.fc1)
    absorb_activation(absorbed.act, absorbed.fc2)
    return plain, absorbed


def outputs_and_gradients(model, x, seed=1):
    x = x.clone().requires_grad_(True)
    torch.manual_seed(seed)
    out = model(x)
    out.square().sum().backward()
    grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]
    return out.detach(), x.grad, grads


@pytest.mark.parametrize('layer_kwargs', [
    dict(kernel='snella', sparsity=0.5),  # fused autograd function
    dict(kernel='snella', sparsity=0.5, checkpoint=False),
    dict(kernel='linear'),  # LoRA's low-rank path
    dict(kernel='snell', sparsity=0.3, dropout=0.2),  # separate update branch
], ids=['fused', 'unfused', 'low-rank', 'dropout-branch'])
def test_absorbing_changes_no_output_and_no_gradient(layer_kwargs):
    plain, absorbed = pair(**layer_kwargs)
    x = torch.randn(3, 5, 8)
    expected = outputs_and_gradients(plain.train(), x)
    got = outputs_and_gradients(absorbed.train(), x)
    torch.testing.assert_close(got[0], expected[0])
    torch.testing.assert_close(got[1], expected[1])
    for a, b in zip(got[2], expected[2]):
        torch.testing.assert_close(a, b)


def test_recomputation_runs_under_the_forward_autocast_state():
    """Under bf16 autocast a frozen projection absorbed into the layer runs in bf16 in forward; its recomputation
    in backward must too, or the update's gradient would come from different inputs."""
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8))
    inject_snella(plain, [r'1'], rank=4, kernel='snella', sparsity=0.5)
    absorbed = copy.deepcopy(plain)
    absorb_activation(absorbed[0], absorbed[1])
    x = torch.randn(3, 5, 8)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        expected = outputs_and_gradients(plain.train(), x)
        got = outputs_and_gradients(absorbed.train(), x)
    assert got[0].dtype == torch.bfloat16
    for a, b in zip([got[0], got[1]] + got[2], [expected[0], expected[1]] + expected[2]):
        assert torch.equal(a, b)  # the same kernels in the same precision: bit for bit


def test_absorbed_modules_keep_their_place_and_keys():
    plain, absorbed = pair(kernel='snella')
    assert absorbed.fc1.absorbed is absorbed.norm and absorbed.fc2.absorbed is absorbed.act
    assert list(absorbed.state_dict()) == list(plain.state_dict())
    x = torch.randn(2, 8)
    assert torch.equal(absorbed.norm(x), x)  # the norm itself passes through; fc1 normalizes


def test_merge_restores_the_absorbed_modules():
    plain, absorbed = pair(kernel='snella', sparsity=0.5)
    x = torch.randn(3, 8)
    with torch.no_grad():
        expected = plain.eval()(x)
        merge_snella(absorbed)
        assert not any(isinstance(m, SNELLALinear) for m in absorbed.modules())
        assert all('forward' not in m.__dict__ for m in absorbed.modules())
        torch.testing.assert_close(absorbed(x), expected)


def test_copies_absorb_their_own_modules():
    """EMA models are deep copies: each copy's layer must compute its own copy's norm."""
    _, absorbed = pair(kernel='snella')
    twin = copy.deepcopy(absorbed)
    assert twin.fc1.absorbed is twin.norm and twin.fc1.absorbed is not absorbed.norm


def test_a_standalone_merge_of_an_absorbing_layer_is_refused():
    _, absorbed = pair(kernel='snella')
    with pytest.raises(RuntimeError, match='merge_snella'):
        absorbed.fc2.merge()


def test_trainable_or_already_absorbed_modules_are_refused():
    plain, absorbed = pair(kernel='snella')
    plain.norm.requires_grad_(True)
    with pytest.raises(ValueError, match='trainable parameters'):
        absorb_activation(plain.norm, plain.fc1)
    with pytest.raises(ValueError, match='already'):
        absorb_activation(absorbed.act, absorbed.fc2)
    with pytest.raises(TypeError, match='SNELLA layer'):
        absorb_activation(nn.GELU(), nn.Linear(2, 2))


def test_unfreezing_an_absorbed_norm_is_a_clear_error():
    """Its recomputation inside the layer gives it no gradient: training it would silently do nothing."""
    _, absorbed = pair(kernel='snella')
    absorbed.norm.requires_grad_(True)
    with pytest.raises(RuntimeError, match='trainable parameters.*absorb_activations=False'):
        absorbed(torch.randn(2, 8))
