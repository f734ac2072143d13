"""The kernel and mask math against small hand-computed cases (docs/method.md, sections 1-2)."""
import contextlib
import math

import pytest
import torch

from dispatch_counter import kernels_as_on_a_gpu
from snella_seg.snella.kernels import (MIN_SAMPLED_SELECTION, SAMPLE_STRIDE, get_kernel, kernel_matrix,
                                       kth_smallest_by_sample, kth_smallest_by_topk, masked_kernel_matrix,
                                       selection_threshold, sparsify, zero_count)
from snella_seg.snella.masks import get_mask


def test_linear_kernel_is_lora_product():
    a = torch.tensor([[[1.0, 2.0], [0.0, 1.0]]])      # (1, in=2, r=2)
    b = torch.tensor([[[3.0, 0.0], [1.0, 1.0], [0.0, 2.0]]])  # (1, out=3, r=2)
    expected = torch.tensor([[3.0, 3.0, 4.0], [0.0, 1.0, 2.0]])
    assert torch.equal(kernel_matrix('linear', a, b), expected)


def test_snell_kernel_is_scaled_difference_of_distances():
    # group 0: A=(0,0),(3,4)  B=(0,0)    -> d0 = [[0],[5]]
    # group 1: A=(1,0),(0,0)  B=(0,0)    -> d1 = [[1],[0]]
    a = torch.tensor([[[0.0, 0.0], [3.0, 4.0]], [[1.0, 0.0], [0.0, 0.0]]])
    b = torch.tensor([[[0.0, 0.0]], [[0.0, 0.0]]])
    m = kernel_matrix('snell', a, b)
    assert m.shape == (2, 1)
    assert torch.allclose(m, torch.tensor([[0.1 * (0 - 1)], [0.1 * (5 - 0)]]))


def test_snella_mixed_kernel_softmax_over_output_axis():
    a = torch.tensor([[[0.0], [1.0]], [[0.0], [0.0]]])   # (2, in=2, 1)
    b = torch.tensor([[[0.0], [2.0]], [[0.0], [0.0]]])   # (2, out=2, 1)
    # base = 0.1 * |a - b| of group 0 (group 1 is zero) = [[0.0, 0.2], [0.1, 0.1]]
    alpha, gamma, beta = torch.tensor(2.0), torch.tensor(0.5), torch.tensor(0.3)
    m = kernel_matrix('snella', a, b, alpha, gamma, beta)
    row0 = [math.exp(0.0 / 0.5), math.exp(0.2 / 0.5)]
    soft0 = [v / sum(row0) for v in row0]
    expected = torch.tensor([[0.0 + 2 * soft0[0] + 0.3, 0.2 + 2 * soft0[1] + 0.3],
                             [0.1 + 2 * 0.5 + 0.3, 0.1 + 2 * 0.5 + 0.3]])
    assert torch.allclose(m, expected, atol=1e-6)


def test_unknown_kernel_and_mask_are_errors():
    with pytest.raises(ValueError, match='unknown kernel'):
        kernel_matrix('rbf', torch.zeros(2, 2, 1), torch.zeros(2, 2, 1))
    with pytest.raises(ValueError, match='unknown mask'):
        sparsify(torch.ones(2, 2), 0.5, 'topk')


def test_magnitude_mask_keeps_largest_scaled_by_own_magnitude():
    m = torch.tensor([[0.5, -2.0], [1.0, -0.1]])
    out = sparsify(m, 0.5, 'magnitude')
    assert torch.equal(out, torch.tensor([[0.0, -4.0], [1.0, 0.0]]))


def test_binary_mask_keeps_largest_unchanged():
    m = torch.tensor([[0.5, -2.0], [1.0, -0.1]])
    assert torch.equal(sparsify(m, 0.5, 'binary'), torch.tensor([[0.0, -2.0], [1.0, 0.0]]))


def test_zero_sparsity_magnitude_still_scales_and_binary_is_identity():
    m = torch.tensor([[0.5, -2.0]])
    assert torch.equal(sparsify(m, 0.0, 'magnitude'), torch.tensor([[0.25, -4.0]]))
    assert torch.equal(sparsify(m, 0.0, 'binary'), m)


@pytest.mark.parametrize('sparsity', [0.0, 0.013, 0.25, 0.5, 0.777, 0.99])
@pytest.mark.parametrize('shape', [(7, 13), (64, 48)])
def test_kept_fraction_within_one_entry(sparsity, shape):
    torch.manual_seed(0)
    m = torch.randn(shape)
    kept = int((sparsify(m, sparsity, 'binary') != 0).sum())
    assert abs(kept - (1 - sparsity) * m.numel()) <= 1


def test_magnitude_mode_scales_gradient_by_magnitude():
    m = torch.tensor([[0.5, -2.0], [1.0, -0.1]], requires_grad=True)
    sparsify(m, 0.5, 'magnitude').sum().backward()
    assert torch.equal(m.grad, torch.tensor([[0.0, 2.0], [1.0, 0.0]]))
    b = m.detach().clone().requires_grad_(True)
    sparsify(b, 0.5, 'binary').sum().backward()
    assert torch.equal(b.grad, torch.tensor([[0.0, 1.0], [1.0, 0.0]]))


def test_threshold_works_beyond_quantile_limit():
    """torch.quantile refuses more than 2**24 entries; the selection used here must not."""
    m = torch.randn(4097, 4097)
    assert m.numel() > 2 ** 24
    kept = int((sparsify(m, 0.9, 'binary') != 0).sum())
    assert abs(kept - 0.1 * m.numel()) <= 1


def test_zero_count_rounds_and_clamps():
    assert zero_count(0.5, 5) == 2  # round half to even, within one entry either way
    assert zero_count(0.999999, 10) == 10
    assert zero_count(0.0, 10) == 0


def kth(values, k):
    return values.kthvalue(k).values


@pytest.mark.parametrize('k', [1, 7, 50_000, 65_536, 131_071, 131_072])
def test_selections_equal_kthvalue(k):
    values = torch.randn(2 ** 17, generator=torch.Generator().manual_seed(0)).abs()
    assert kth_smallest_by_topk(values, k) == kth(values, k)
    assert kth_smallest_by_sample(values, k) == kth(values, k)


def test_sampled_selection_with_ties_and_a_misleading_sample():
    ties = torch.randint(0, 4, (MIN_SAMPLED_SELECTION,), generator=torch.Generator().manual_seed(0)).float()
    for k in (1, 1000, 30_000, ties.numel()):
        assert kth_smallest_by_sample(ties, k) == kth(ties, k)
    # every sampled entry is small, the rest large: the band brackets the wrong values, the full selection runs
    misleading = torch.arange(MIN_SAMPLED_SELECTION, dtype=torch.float32) + 1000
    misleading[::SAMPLE_STRIDE] = torch.linspace(0, 1, misleading[::SAMPLE_STRIDE].numel())
    assert kth_smallest_by_sample(misleading, 40_000) == kth(misleading, 40_000)


@pytest.mark.parametrize('size', [100, MIN_SAMPLED_SELECTION + 3])
def test_selection_threshold_is_the_kth_smallest_magnitude(size):
    magnitude = torch.rand(size, generator=torch.Generator().manual_seed(3))
    assert selection_threshold(magnitude, 0.3) == kth(magnitude, round(0.3 * size))
    assert selection_threshold(magnitude, 0.0) is None


def composite_masked_matrix(kernel, factors, sparsity, mask):
    """The plain composite the fused kernels replace: the registry's matrix, then ``sparsify``, under autograd."""
    matrix = get_kernel(kernel).matrix(*factors)
    if sparsity is None:
        return matrix
    return sparsify(matrix, sparsity, mask, selection_threshold(matrix.detach().abs(), sparsity))


def kernel_factors(kernel, rows, cols, seed, coinciding=True):
    generator = torch.Generator().manual_seed(seed)
    in_factors = (torch.rand(2, rows, 3, generator=generator) - 0.5) * 0.4
    out_factors = (torch.rand(2, cols, 3, generator=generator) - 0.5) * 0.4
    if coinciding:
        out_factors[:, 0] = in_factors[:, 0]  # a zero distance, whose gradient autograd defines as zero
    scalars = [torch.tensor(1.3), torch.tensor(0.7), torch.tensor(0.1)] if kernel == 'snella' else []
    return [in_factors, out_factors, *scalars]


# Up to 25 rows on both sides torch.cdist computes distances directly, beyond through a matrix product
# The gradient masks zero distances; on the CPU only when one occurs (host_reads_are_free), on a GPU always
@pytest.mark.parametrize('device_path', [False, True])
@pytest.mark.parametrize('coinciding', [True, False])
@pytest.mark.parametrize('rows, cols', [(12, 18), (40, 30)])
@pytest.mark.parametrize('kernel', ['snella', 'snell'])
@pytest.mark.parametrize('sparsity, mask', [(0.7, 'magnitude'), (0.0, 'magnitude'), (0.5, 'binary'),
                                            (None, 'magnitude')])
def test_fused_kernel_keeps_the_composites_entries_values_and_gradients(kernel, rows, cols, sparsity, mask,
                                                                         coinciding, device_path):
    factors = kernel_factors(kernel, rows, cols, seed=rows, coinciding=coinciding)
    upstream = torch.randn(rows, cols, generator=torch.Generator().manual_seed(1))
    results = []
    with kernels_as_on_a_gpu() if device_path else contextlib.nullcontext():
        for build in (lambda f: composite_masked_matrix(kernel, f, sparsity, mask),
                      lambda f: masked_kernel_matrix(get_kernel(kernel), f, sparsity, get_mask(mask))[0]):
            leaves = [f.clone().requires_grad_(True) for f in factors]
            matrix = build(leaves)
            results.append((matrix.detach(), torch.autograd.grad(matrix, leaves, upstream)))
    (composite, composite_grads), (fused, fused_grads) = results
    assert torch.equal(fused, composite)  # same values, so the same kept entries
    for fused_grad, composite_grad in zip(fused_grads, composite_grads):
        # the same formulas in the same order: bitwise equal on cdist's matrix-product path; on its direct path (up
        # to 25 rows on both sides) autograd uses cdist's own backward, which sums in another order (a few ulps)
        assert torch.allclose(fused_grad, composite_grad, rtol=1e-5, atol=1e-6)
        if max(rows, cols) > 25:
            assert torch.equal(fused_grad, composite_grad)


@pytest.mark.parametrize('kernel', ['snella', 'snell'])
def test_fused_kernel_without_gradients_builds_the_same_matrix_and_threshold(kernel):
    factors = kernel_factors(kernel, 40, 30, seed=2)
    spec = get_kernel(kernel)
    magnitude = get_mask('magnitude')
    tracked, tracked_threshold = masked_kernel_matrix(spec, [f.requires_grad_(True) for f in factors], 0.6, magnitude)
    with torch.no_grad():
        plain, plain_threshold = masked_kernel_matrix(spec, factors, 0.6, magnitude)
        reused, _ = masked_kernel_matrix(spec, factors, 0.6, magnitude, threshold=plain_threshold)
    assert torch.equal(plain, tracked.detach()) and torch.equal(reused, plain)
    assert plain_threshold == tracked_threshold
