"""The built-in masks against the formulas of docs/method.md (sections 1 and 2), bit for bit: values, kept sets and
gradients of every kernel and mask through the layer's own ΔW build, on the CPU's and on a GPU's code path."""
import contextlib

import pytest
import torch

from dispatch_counter import kernels_as_on_a_gpu
from snella_seg.snella import SparseKernelDelta


def reference_matrix(kernel, in_factors, out_factors, *scalars):
    """``M`` written from the formulas: LoRA's ``A B^T``; SNELL's ``0.1 (d_0 - d_1)`` with
    ``d_h[i, j] = ||a_i^h - b_j^h||``; SNELLA's ``M_snell + alpha softmax(M_snell / gamma) + beta`` over the output
    axis."""
    if kernel == 'linear':
        return in_factors[0] @ out_factors[0].T
    distances = torch.cdist(in_factors, out_factors)
    matrix = 0.1 * (distances[0] - distances[1])
    if kernel == 'snella':
        alpha, gamma, beta = scalars
        matrix = matrix + alpha * torch.softmax(matrix / gamma, dim=-1) + beta
    return matrix


def reference_delta(kernel, factors, sparsity, mask):
    """ΔW = the masked ``M``, transposed: ``t`` is the k-th smallest ``|M|`` with ``k = round(s N)``; kept entries
    (``|M| > t``) are multiplied by their detached magnitude (``magnitude``) or by 1 (``binary``). SNELLA's kernel is
    masked even at s = 0 (magnitude: every entry times ``|M|``), the others only at s > 0."""
    matrix = reference_matrix(kernel, *factors)
    if kernel != 'snella' and sparsity == 0:
        return matrix.T
    magnitude = matrix.detach().abs()
    zeroed = round(sparsity * magnitude.numel())
    keep = magnitude > magnitude.flatten().kthvalue(zeroed).values if zeroed else torch.ones_like(magnitude).bool()
    factor = magnitude * keep if mask == 'magnitude' else keep.to(matrix.dtype)
    return (matrix * factor).T


def random_factors(update, seed):
    generator = torch.Generator().manual_seed(seed)
    factors = [(torch.rand(p.shape, generator=generator) - 0.5) * 0.4 for p in update.factor_parameters()[:2]]
    scalars = [torch.tensor(value) for value in (1.3, 0.7, 0.1)][:len(update.spec.scalars)]
    return factors + scalars


@pytest.mark.parametrize('device_path', [False, True])
@pytest.mark.parametrize('rows, cols', [(40, 30), (300, 260)])  # the second selects through a sample on the CPU
@pytest.mark.parametrize('sparsity', [0.0, 0.3, 0.7, 0.95])
@pytest.mark.parametrize('mask', ['magnitude', 'binary'])
@pytest.mark.parametrize('kernel', ['linear', 'snell', 'snella'])
def test_masked_update_is_the_formula_bit_for_bit(kernel, mask, sparsity, rows, cols, device_path):
    """Over 25 rows on either side cdist multiplies matrices, and the fused kernel's hand-written backward follows
    autograd's formulas in autograd's order: the gradients are then bitwise autograd's of the formula."""
    update = SparseKernelDelta(cols, rows, rank=4, kernel=kernel, sparsity=sparsity, mask=mask)
    factors = random_factors(update, seed=rows)
    # the gradient of ΔW as the fused layer passes it: the transpose of a contiguous (in x out) matrix
    upstream = torch.randn(cols, rows, generator=torch.Generator().manual_seed(1)).T
    leaves = [f.clone().requires_grad_(True) for f in factors]
    expected = reference_delta(kernel, leaves, sparsity, mask)
    expected_grads = torch.autograd.grad(expected, leaves, upstream)
    with kernels_as_on_a_gpu() if device_path else contextlib.nullcontext():
        leaves = [f.clone().requires_grad_(True) for f in factors]
        delta, threshold = update.compute_delta(*leaves)
        grads = torch.autograd.grad(delta, leaves, upstream)
        # the fused layer's backward: the same factors, the forward's threshold
        rebuilt, _ = update.compute_delta(*leaves, threshold=threshold)
        rebuilt_grads = torch.autograd.grad(rebuilt, leaves, upstream)
    assert torch.equal(delta, expected.detach()) and torch.equal(rebuilt, delta)
    assert torch.equal(delta != 0, expected.detach() != 0)
    for grad, rebuilt_grad, expected_grad in zip(grads, rebuilt_grads, expected_grads):
        assert torch.equal(grad, expected_grad) and torch.equal(rebuilt_grad, expected_grad)
