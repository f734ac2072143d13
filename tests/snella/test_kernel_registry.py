"""A kernel added from outside the package (one registry entry) builds, trains, merges and is checked like the
built-in ones."""
import pytest
import torch
from torch import nn

from snella_seg.snella import KERNELS, Kernel, SNELLAConfig, SNELLALinear, register_kernel


def scaled_product(in_factors, out_factors, scale):
    """A test kernel: LoRA's product times a learnable scale."""
    return scale * (in_factors[0] @ out_factors[0].T)


def grouped_product(in_factors, out_factors):
    """A test kernel over three factor groups: the sum of the groups' products."""
    return torch.einsum('hir,hor->io', in_factors, out_factors)


@pytest.fixture
def registered():
    """Registers test kernels for one test and removes them after it."""
    names = []

    def register(kernel):
        names.append(kernel.name)
        return register_kernel(kernel)
    yield register
    for name in names:
        KERNELS.pop(name)


@pytest.fixture
def scaled(registered):
    return registered(Kernel('test_scaled', scaled_product, scalars={'scale': 0.5}))


def tanh_product(in_factors, out_factors):
    """A test kernel whose last operation reads its own output in backward, as tanh does."""
    return torch.tanh(in_factors[0] @ out_factors[0].T)


def make_layer(kernel, sparsity=0.0, checkpoint=True, split=1, seed=0):
    torch.manual_seed(seed)
    return SNELLALinear(nn.Linear(6, 9), rank=2, kernel=kernel, sparsity=sparsity, checkpoint=checkpoint, split=split)


def test_registered_kernel_gets_its_groups_and_scalars_with_their_initial_values(registered):
    registered(Kernel('test_grouped', grouped_product, groups=3))
    registered(Kernel('test_scaled', scaled_product, scalars={'scale': 0.5}))
    grouped = SNELLALinear(nn.Linear(6, 9), rank=6, kernel='test_grouped')
    assert grouped.in_factors.shape == (3, 6, 2) and grouped.out_factors.shape == (3, 9, 2)
    scaled = make_layer('test_scaled')
    assert {n for n, p in scaled.named_parameters() if p.requires_grad} == {
        'deltas.0.in_factors', 'deltas.0.out_factors', 'deltas.0.scale'}
    assert float(scaled.deltas[0].scale.detach()) == 0.5


def test_registered_kernel_matrix_is_the_update(scaled):
    layer = make_layer('test_scaled')
    d = layer.deltas[0]
    expected = (0.5 * d.in_factors[0] @ d.out_factors[0].T).T
    assert torch.allclose(layer.delta_weight(), expected)
    x = torch.randn(4, 6)
    assert torch.allclose(layer(x), layer.base(x) + x @ expected.T, atol=1e-6)


@pytest.mark.parametrize('checkpoint', [True, False])
def test_registered_kernel_trains_through_the_layer(scaled, checkpoint):
    layer = make_layer('test_scaled', sparsity=0.3, checkpoint=checkpoint, split=3)
    x, target = torch.randn(16, 6), torch.randn(16, 9)
    optimizer = torch.optim.SGD(layer.factor_parameters(), lr=0.1)
    start = layer.deltas[0].scale.detach().clone()
    losses = []
    for _ in range(5):
        loss = nn.functional.mse_loss(layer(x), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert not torch.equal(layer.deltas[0].scale, start)
    assert layer.base.weight.grad is None


def test_registered_kernel_merges_into_a_plain_linear(scaled):
    layer = make_layer('test_scaled', sparsity=0.4, split=3).eval()
    x = torch.randn(3, 6)
    merged = layer.merge()
    assert type(merged) is nn.Linear
    assert torch.allclose(merged(x), layer(x), atol=1e-6)


def test_zero_initialised_output_factors_start_from_no_update(registered):
    registered(Kernel('test_zero_start', scaled_product, scalars={'scale': 0.5}, zero_init_output=True))
    assert make_layer('test_zero_start').delta_weight().abs().sum() == 0


@pytest.mark.parametrize('always_masked', [True, False])
def test_always_masked_kernel_applies_its_mask_at_zero_sparsity(registered, always_masked):
    registered(Kernel('test_masked', scaled_product, scalars={'scale': 0.5}, always_masked=always_masked))
    layer = make_layer('test_masked')
    d = layer.deltas[0]
    matrix = 0.5 * d.in_factors[0] @ d.out_factors[0].T
    expected = matrix * matrix.abs() if always_masked else matrix  # the magnitude mask scales by |M|
    assert torch.allclose(layer.delta_weight(), expected.T)


@pytest.mark.parametrize('name', ['sparsity', 'in_factors', 'mask', 'forward'])
def test_scalars_named_like_the_updates_own_attributes_are_refused(registered, name):
    registered(Kernel('test_clash', scaled_product, scalars={name: 1.0}))
    with pytest.raises(ValueError, match=f"scalars \\['{name}'\\], which SparseKernelDelta uses itself"):
        make_layer('test_clash')


def test_unknown_kernel_is_refused_naming_the_registered_ones_and_how_to_add_one():
    with pytest.raises(ValueError, match=r"unknown kernel 'test_missing'; choose one of \(.*'snella'.*register_kernel"):
        make_layer('test_missing')


def test_config_checks_a_registered_kernel_and_its_groups(registered):
    registered(Kernel('test_grouped', grouped_product, groups=3))
    assert SNELLAConfig(targets=['fc'], rank=6, kernel='test_grouped').kernel == 'test_grouped'
    with pytest.raises(ValueError, match="divisible by 3 for kernel 'test_grouped'"):
        SNELLAConfig(targets=['fc'], rank=4, kernel='test_grouped')
    with pytest.raises(ValueError, match='unknown kernel'):
        SNELLAConfig(targets=['fc'], rank=4, kernel='test_missing')


def test_a_taken_name_is_refused_unless_replacing(scaled):
    with pytest.raises(ValueError, match="'test_scaled' is already registered.*replace=True"):
        register_kernel(Kernel('test_scaled', grouped_product))
    assert register_kernel(scaled, replace=True) is KERNELS['test_scaled']


@pytest.mark.parametrize('kwargs, message', [
    (dict(groups=0), 'groups must be a positive integer'),
    (dict(scalars={'not a name': 1.0}), 'not Python identifiers'),
    (dict(bilinear=True, groups=2), 'one group and no scalars'),
])
def test_inconsistent_kernel_entries_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Kernel('test_bad', grouped_product, **kwargs)


@pytest.mark.parametrize('split', [1, 3])
def test_a_kernel_whose_backward_reads_its_result_trains_through_the_fused_layer(registered, split):
    """The fused layer adds W0 in place only into the concatenation of split updates, never into a kernel's own
    result: an in-place add there would make autograd refuse the backward of a kernel that reads it (tanh)."""
    registered(Kernel('test_tanh', tanh_product))
    x = torch.randn(4, 6, generator=torch.Generator().manual_seed(3))
    grads = []
    for checkpoint in (True, False):
        layer = make_layer('test_tanh', checkpoint=checkpoint, split=split)
        layer(x).square().sum().backward()
        grads.append([p.grad for p in layer.factor_parameters()])
    for fused, plain in zip(*grads):
        assert torch.allclose(fused, plain, atol=1e-6)
