"""A process that lowers float32 matmul precision (TF32, bf16) does not reach the ΔW build: cdist's matrix product
would round differently and move entries across the selection threshold."""
import pytest
import torch
from torch import nn

from snella_seg.snella import KERNELS, Kernel, SNELLALinear, SparseKernelDelta, register_kernel
from snella_seg.snella.kernels import MATMUL_BACKENDS


def backend_precisions():
    return [backend.fp32_precision for backend in MATMUL_BACKENDS]


@pytest.fixture
def process_precision():
    """Sets the process's float32 matmul precision for one test, and puts the previous one back after it."""
    previous = torch.get_float32_matmul_precision()
    yield torch.set_float32_matmul_precision
    torch.set_float32_matmul_precision(previous)


# What precision_recording_product saw, per call
RECORDED = []


def precision_recording_product(in_factors, out_factors):
    """A test kernel: LoRA's product, recording the matmul precision it runs under."""
    RECORDED.append(backend_precisions())
    return in_factors[0] @ out_factors[0].T


@pytest.fixture
def recorded():
    register_kernel(Kernel('test_recording', precision_recording_product))
    RECORDED.clear()
    yield RECORDED
    KERNELS.pop('test_recording')


def build(kernel, mask, sparsity):
    update = SparseKernelDelta(200, 300, rank=8, kernel=kernel, sparsity=sparsity, mask=mask)
    with torch.no_grad():
        for parameter in update.factor_parameters()[:2]:
            parameter.copy_(torch.randn(parameter.shape, generator=torch.Generator().manual_seed(5)))
    delta, threshold = update.compute_delta(*update.factor_parameters())
    gradients = torch.autograd.grad(delta.square().sum(), update.factor_parameters())
    return delta.detach(), threshold, gradients


@pytest.mark.parametrize('precision', ['high', 'medium'])
@pytest.mark.parametrize('kernel, mask', [('snella', 'magnitude'), ('snell', 'binary')])
def test_delta_and_kept_set_ignore_the_process_matmul_precision(process_precision, kernel, mask, precision):
    process_precision('highest')
    expected, expected_threshold, expected_gradients = build(kernel, mask, 0.6)
    process_precision(precision)
    delta, threshold, gradients = build(kernel, mask, 0.6)
    assert torch.equal(delta, expected) and torch.equal(delta != 0, expected != 0)
    assert torch.equal(threshold, expected_threshold)
    for gradient, expected_gradient in zip(gradients, expected_gradients):
        assert torch.equal(gradient, expected_gradient)
    assert torch.get_float32_matmul_precision() == precision  # the process's setting is back


@pytest.mark.parametrize('checkpoint', [True, False])
@pytest.mark.parametrize('precision', ['high', 'medium'])
def test_the_build_runs_at_full_precision_and_restores_the_setting(process_precision, recorded, precision,
                                                                    checkpoint):
    process_precision(precision)
    outside = backend_precisions()
    assert 'ieee' not in outside
    layer = SNELLALinear(nn.Linear(6, 9), rank=2, kernel='test_recording', sparsity=0.5, checkpoint=checkpoint)
    layer(torch.randn(4, 6)).sum().backward()
    assert recorded and all(inside == ['ieee', 'ieee'] for inside in recorded)  # forward and backward's rebuild
    assert len(recorded) == (2 if checkpoint else 1)
    assert backend_precisions() == outside and torch.get_float32_matmul_precision() == precision


def test_a_caller_at_full_precision_is_left_as_it_is(process_precision, recorded):
    process_precision('highest')
    SparseKernelDelta(6, 9, rank=2, kernel='test_recording', sparsity=0.5).delta_weight()
    assert recorded == [backend_precisions()] and torch.get_float32_matmul_precision() == 'highest'
