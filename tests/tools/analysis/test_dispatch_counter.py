"""DispatchCounter finds on the CPU every read-back that would sync a GPU, backward included."""
import torch

from dispatch_counter import DispatchCounter


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
