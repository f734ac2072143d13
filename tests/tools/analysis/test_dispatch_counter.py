"""DispatchCounter finds on the CPU every read-back that would sync a GPU, backward included, and every kernel
launch, Triton's included."""
import pytest
import torch

from dispatch_counter import HOST_READ, DispatchCounter, foreach_launches


def test_scalar_reads_mask_indexing_and_host_copies_count_as_syncs():
    values = torch.randn(6)
    with DispatchCounter() as counter:
        float(values.sum())
        bool(values[0] > 0)
        values[values > 0]
        values.nonzero()
        values.tolist()
        values.numpy()
    assert counter.host_syncs == 6


def test_device_only_work_and_backward_make_no_sync_but_count_their_operators():
    weight = torch.randn(4, 4, requires_grad=True)
    with DispatchCounter() as counter:
        (weight @ weight).relu().sum().backward()
    assert counter.host_syncs == 0
    assert counter.counts['aten::mm'] >= 3  # the product and its two gradients


def test_reads_of_host_resident_tensors_are_not_syncs():
    step = torch.tensor(3.0)
    with DispatchCounter(host_resident=[step]) as counter:
        float(step)
        step.tolist()
    assert counter.host_syncs == 0


def test_leaving_the_counter_restores_tensor_methods():
    original = torch.Tensor.tolist
    with DispatchCounter():
        assert torch.Tensor.tolist is not original
    assert torch.Tensor.tolist is original


def test_views_and_allocations_launch_no_kernel_but_arithmetic_does():
    weight = torch.randn(4, 4)
    with DispatchCounter() as counter:
        weight.view(16).unsqueeze(0).expand(2, 16).transpose(0, 1).permute(1, 0)[0].detach()
        torch.empty(3)
        weight.t().split(2)
    assert counter.total > 0 and counter.launches == 0
    with DispatchCounter() as counter:
        (weight @ weight.t()).relu()
    assert counter.launches == 2


def _double(x_ptr, out_ptr, n, BLOCK):  # a Triton kernel, jitted by the test once Triton is known to be there
    import triton.language as tl
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(out_ptr + offsets, 2 * tl.load(x_ptr + offsets, mask=offsets < n), mask=offsets < n)


def test_every_triton_kernel_launch_counts_once_and_nothing_inside_it_counts(monkeypatch):
    triton = pytest.importorskip('triton')
    import triton.language as tl
    monkeypatch.setenv('TRITON_INTERPRET', '1')  # read when a function is jitted: the CPU runs it
    double = triton.jit(_double)
    x = torch.arange(10.0)
    out = torch.empty_like(x)
    with DispatchCounter() as counter:
        double[(2,)](x, out, x.numel(), BLOCK=tl.constexpr(8))
        double[(2,)](x, out, x.numel(), BLOCK=tl.constexpr(8))
        out.view(2, 5)
    assert torch.equal(out, 2 * x)
    assert (counter.launches, counter.triton_launches, counter.host_syncs) == (2, 2, 0), counter.counts


def test_a_foreach_operator_launches_a_kernel_per_chunk_of_tensors():
    # MultiTensorApply.cuh: 110 tensors of depth 1 per launch (4 KB kernel arguments), 770 (32 KB); 320 or 2240
    # blocks of 65536 elements
    assert foreach_launches([10] * 220, depth=1, limits='small') == 2
    assert foreach_launches([10] * 221, depth=1, limits='small') == 3
    assert foreach_launches([10] * 221, depth=1) == 1
    assert foreach_launches([10] * 96, depth=1, scalar_list=True, limits='small') == 1
    assert foreach_launches([10] * 97, depth=1, scalar_list=True, limits='small') == 2
    assert foreach_launches([65536 * 320 + 1], depth=2, limits='small') == 2  # blocks full, the tensor goes on
    assert foreach_launches([0, 0], depth=1) == 0


def test_adamw_launches_per_chunk_with_foreach_and_its_host_steps_launch_nothing():
    params = [torch.nn.Parameter(torch.randn(10, 3)) for _ in range(4)]
    # per tensor or per list: 2 mul_, lerp_, addcmul_, sqrt, div, add_, addcdiv_
    for foreach, launches in ((False, 4 * 8), (True, 8)):
        optimizer = torch.optim.AdamW(params, foreach=foreach)
        for param in params:
            param.grad = torch.randn_like(param)
        optimizer.step()
        steps = [state['step'] for state in optimizer.state.values()]
        with DispatchCounter(host_resident=steps) as counter:
            optimizer.step()
        assert counter.launches == launches, counter.launch_counts
        assert counter.host_syncs == 0
        assert counter.counts[HOST_READ] >= 4  # the bias corrections read each step count on the host


def test_launches_are_split_by_phase():
    weight = torch.randn(4, 4, requires_grad=True)
    with DispatchCounter() as counter:
        loss = (weight @ weight).sum()
        with counter.in_phase('backward'):
            loss.backward()
    phases = counter.launches_by_phase()
    assert set(phases) == {'forward', 'backward'} and sum(phases.values()) == counter.launches
    assert phases['forward'] == 2 and counter.phase == 'forward'
