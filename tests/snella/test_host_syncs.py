"""Adapted layers never make the host wait for the device: every ``.item()``, ``float(t)`` or boolean index in their
forward or backward would drain a GPU's stream once per update per step. Counted on the CPU with the CUDA
selection path (``topk``) forced, for every kernel and forward path."""
import pytest
import torch

from dispatch_counter import DispatchCounter, kernels_as_on_a_gpu
from snella_seg.snella import absorb_activation, inject_snella

from tests.helpers.tiny_vit import ALL_TARGETS, MLP, TinyViT

# (kernel, sparsity): 'linear' at 0 is LoRA's low-rank path; masked, every kernel builds a dense ΔW
KERNELS = [('snella', 0.0), ('snella', 0.5), ('snell', 0.0), ('snell', 0.5), ('linear', 0.0), ('linear', 0.5)]
PATHS = {
    'fused checkpointed': dict(checkpoint=True),
    'plain dense': dict(checkpoint=False),
    'separate branch': dict(dropout=0.1, drop_path=0.1),
}


@pytest.fixture(autouse=True)
def gpu_kernel_path():
    with kernels_as_on_a_gpu():
        yield


def adapted_models(kernel: str, sparsity: float, **options):
    """A tiny ViT (split qkv, proj, fc1, fc2) and an MLP whose adapted layers absorb its norm and activation."""
    torch.manual_seed(0)
    vit, mlp = TinyViT(), MLP(dim=16, hidden=32)
    inject_snella(vit, ALL_TARGETS, rank=4, kernel=kernel, sparsity=sparsity, **options)
    inject_snella(mlp, [r'fc\d'], rank=4, kernel=kernel, sparsity=sparsity, **options)
    absorb_activation(mlp.norm, mlp.fc1)
    absorb_activation(mlp.act, mlp.fc2)
    return vit, mlp


def loss(vit, mlp) -> torch.Tensor:
    return vit(torch.randn(2, 6, 4)).square().sum() + mlp(torch.randn(2, 5, 16)).square().sum()


@pytest.mark.parametrize('path', PATHS)
@pytest.mark.parametrize('kernel, sparsity', KERNELS)
def test_training_forward_and_backward_make_no_host_sync(kernel, sparsity, path):
    vit, mlp = adapted_models(kernel, sparsity, **PATHS[path])
    with DispatchCounter() as counter:
        loss(vit, mlp).backward()
    assert counter.host_syncs == 0, counter.syncs_by_operator()
    assert vit.blocks[0].attn.qkv.deltas[0].in_factors.grad is not None  # the counted step did train the updates


def test_training_step_under_bf16_autocast_makes_no_host_sync():
    vit, mlp = adapted_models('snella', 0.5)
    with DispatchCounter() as counter, torch.autocast('cpu', dtype=torch.bfloat16):
        loss(vit, mlp).backward()
    assert counter.host_syncs == 0, counter.syncs_by_operator()


@pytest.mark.parametrize('checkpoint', [True, False])
@pytest.mark.parametrize('kernel, sparsity', KERNELS)
def test_eval_forwards_make_no_host_sync(kernel, sparsity, checkpoint):
    vit, mlp = adapted_models(kernel, sparsity, checkpoint=checkpoint)
    vit.eval(), mlp.eval()
    with DispatchCounter() as counter, torch.no_grad():
        loss(vit, mlp)  # builds the eval ΔW cache
        loss(vit, mlp)  # reuses it
    assert counter.host_syncs == 0, counter.syncs_by_operator()


def test_a_changed_sparsity_costs_no_host_sync():
    vit, mlp = adapted_models('snella', 0.5)
    for layer in (vit.blocks[0].attn.qkv, mlp.fc2):
        for delta in layer.deltas:
            delta.set_sparsity(0.25)  # what the allocator does between steps
    with DispatchCounter() as counter:
        loss(vit, mlp).backward()
    assert counter.host_syncs == 0, counter.syncs_by_operator()
