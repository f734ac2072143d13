"""The fused (Triton) masked distance kernel against the eager reference, run on the CPU in Triton's interpreter.

``TRITON_INTERPRET=1`` must be set before the kernels are decorated: this module sets it when triton is not imported
yet; otherwise, unless it is set already, the module's tests run in a subprocess that sets it.
"""
import contextlib
import os
import subprocess
import sys
from collections import Counter

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

if 'triton' not in sys.modules:  # triton.language's own helpers are decorated when triton is imported
    os.environ.setdefault('TRITON_INTERPRET', '1')
INTERPRETED = os.environ.get('TRITON_INTERPRET') == '1'
pytest.importorskip('triton')

import snella_seg.snella  # noqa: E402
from dispatch_counter import SYNC_OPERATORS  # noqa: E402
from snella_seg.snella import fused_kernels  # noqa: E402
from snella_seg.snella.fused_kernels import (fused_kernels_available, fused_kernels_forced,  # noqa: E402
                                             fused_masked_distance_kernel)
from snella_seg.snella.kernels import kernel_matrix, masked_distance_kernel  # noqa: E402
from snella_seg.snella.masks import Mask, get_mask, magnitude_scale  # noqa: E402

KERNELS_MODULE = 'snella_seg.snella._triton_kernels'
in_the_interpreter = pytest.mark.skipif(not INTERPRETED, reason='triton was imported without TRITON_INTERPRET=1: '
                                        'test_in_a_subprocess_with_the_interpreter runs these')
# ΔW: float32 agreement with eager. Gradients: sums of cancelling terms, whose float32 rounding (eager's and the
# fused path's alike) is about 1e-6 of the largest entry, so their absolute tolerance scales with it
RTOL, ATOL = 1e-5, 1e-6
GRAD_ATOL = 1e-5
# Views and empty allocations launch nothing
ALLOCATIONS = {'aten::empty', 'aten::empty_strided', 'aten::empty_like', 'aten::new_empty',
               'aten::new_empty_strided'}
LAUNCH_BUDGET = 25


def kernel_factors(kernel, rows, cols, seed):
    generator = torch.Generator().manual_seed(seed)
    in_factors = (torch.rand(2, rows, 3, generator=generator) - 0.5) * 0.4
    out_factors = (torch.rand(2, cols, 3, generator=generator) - 0.5) * 0.4
    if max(rows, cols) <= 25:  # a zero distance (gradient 0); beyond 25 rows cdist's product path blurs it
        out_factors[:, 0] = in_factors[:, 0]
    scalars = [torch.tensor(1.3), torch.tensor(0.7), torch.tensor(0.1)] if kernel == 'snella' else []
    return [in_factors, out_factors, *scalars]


def eager_kernel(factors, sparsity, mask, threshold=None):
    """The eager reference (on CPU tensors outside ``fused_kernels_forced``), taking the mask by name."""
    return masked_distance_kernel(factors, sparsity, get_mask(mask), threshold)


def built_with_gradients(build, factors, sparsity, mask, upstream, threshold=None):
    leaves = [f.clone().requires_grad_(True) for f in factors]
    matrix, used = build(leaves, sparsity, mask, threshold)
    return matrix.detach(), used, torch.autograd.grad(matrix, leaves, upstream)


def near_threshold(matrix, threshold):
    return (matrix.abs() - threshold).abs() <= ATOL + RTOL * threshold.abs()


@in_the_interpreter
@pytest.mark.parametrize('rows, cols', [(5, 7), (19, 150)])  # one tile; 3 x 2 tiles, neither a block's multiple
@pytest.mark.parametrize('sparsity', [None, 0.0, 0.3, 0.9])
@pytest.mark.parametrize('mask', ['magnitude', 'binary'])
@pytest.mark.parametrize('kernel', ['snell', 'snella'])
def test_fused_kernel_matches_eager_and_its_rebuild_is_bitwise_equal(kernel, mask, sparsity, rows, cols):
    factors = kernel_factors(kernel, rows, cols, seed=rows + cols)
    upstream = torch.randn(rows, cols, generator=torch.Generator().manual_seed(1))
    eager, eager_threshold, eager_grads = built_with_gradients(eager_kernel, factors, sparsity, mask, upstream)
    fused, threshold, grads = built_with_gradients(fused_masked_distance_kernel, factors, sparsity, mask, upstream)

    assert fused.T.is_contiguous()
    assert (threshold is None) == (eager_threshold is None)
    kept, eager_kept = fused != 0, eager != 0
    agree = kept == eager_kept
    if threshold is not None:
        assert torch.allclose(threshold, eager_threshold, rtol=RTOL, atol=ATOL)
        unmasked = kernel_matrix(kernel, *factors)
        assert near_threshold(unmasked, eager_threshold)[~agree].all()
    assert torch.allclose(fused[agree], eager[agree], rtol=RTOL, atol=ATOL)
    if agree.all():  # a disputed entry changes the gradient where it is kept
        for grad, eager_grad in zip(grads, eager_grads):
            assert torch.allclose(grad, eager_grad, rtol=RTOL, atol=GRAD_ATOL * float(eager_grad.abs().max()))

    with torch.no_grad():  # the backward rebuild, with the forward's threshold: the same entries, bit for bit
        rebuilt, rebuilt_threshold = fused_masked_distance_kernel(factors, sparsity, mask, threshold)
    assert torch.equal(rebuilt, fused) and rebuilt_threshold is threshold


@in_the_interpreter
def test_unmasked_ignores_a_threshold_as_eager_does():
    factors = kernel_factors('snell', 5, 7, seed=5)
    threshold = torch.tensor(0.01)
    with torch.no_grad():
        eager, eager_threshold = eager_kernel(factors, None, 'binary', threshold)
        fused, fused_threshold = fused_masked_distance_kernel(factors, None, 'binary', threshold)
    below = (eager.abs() <= threshold) & (eager != 0)  # what the threshold would zero
    assert below.any() and (fused[below] != 0).all()
    assert torch.allclose(fused, eager, rtol=RTOL, atol=ATOL)
    assert fused_threshold is eager_threshold is threshold


@in_the_interpreter
def test_the_gradient_reads_either_layout_of_the_incoming_gradient():
    """The layer hands back dL/dΔW (out x in, contiguous); autograd of M hands its transpose."""
    factors = kernel_factors('snella', 5, 7, seed=3)
    upstream = torch.randn(5, 7, generator=torch.Generator().manual_seed(4))
    grads = []
    for layout in (lambda m: (m, upstream), lambda m: (m.T, upstream.T.contiguous())):
        leaves = [f.clone().requires_grad_(True) for f in factors]
        output, gradient = layout(fused_masked_distance_kernel(leaves, 0.5, 'magnitude')[0])
        grads.append(torch.autograd.grad(output, leaves, gradient))
    for in_m_layout, in_delta_layout in zip(*grads):
        assert torch.equal(in_m_layout, in_delta_layout)


class LaunchCounter(TorchDispatchMode):
    """Torch operators (views and allocations aside) plus this module's Triton launches, and host syncs."""

    def __init__(self, monkeypatch):
        super().__init__()
        self.counts: Counter = Counter()
        self.launching = False
        launch = fused_kernels._launch

        def counted_launch(kernel, grid, *args, **meta):
            self.counts[f'triton:{kernel.__name__}'] += 1
            self.launching = True  # the interpreter's own copies are no launches of a GPU
            try:
                launch(kernel, grid, *args, **meta)
            finally:
                self.launching = False
        monkeypatch.setattr(fused_kernels, '_launch', counted_launch)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name
        if not self.launching and not func.is_view and name not in ALLOCATIONS:
            self.counts[name] += 1
        return func(*args, **(kwargs or {}))

    def take(self) -> Counter:
        counts, self.counts = self.counts, Counter()
        return counts


@in_the_interpreter
@pytest.mark.parametrize('kernel, backward_launches', [('snella', 2), ('snell', 2)])
def test_an_update_costs_the_documented_launches_and_no_host_sync(kernel, backward_launches, monkeypatch):
    factors = kernel_factors(kernel, 9, 11, seed=0)
    leaves = [f.clone().requires_grad_(True) for f in factors]
    upstream = torch.randn(9, 11)
    with LaunchCounter(monkeypatch) as counter:
        with torch.no_grad():  # the layer's forward
            _, threshold = fused_masked_distance_kernel(factors, 0.5, 'magnitude')
        forward = counter.take()
        rebuilt, _ = fused_masked_distance_kernel(leaves, 0.5, 'magnitude', threshold)  # its backward
        rebuild = counter.take()
        torch.autograd.grad(rebuilt, leaves, upstream)
        backward = counter.take()
    every = forward + rebuild + backward
    assert not set(every) & SYNC_OPERATORS, every
    assert sum(forward.values()) == 4 and forward['triton:build_kernel'] == 2, forward
    assert sum(rebuild.values()) == 1, rebuild
    assert sum(backward.values()) == backward_launches and backward['triton:grad_kernel'] == 1, backward
    assert backward['triton:column_grad_kernel'] == 1, backward
    assert sum(every.values()) <= LAUNCH_BUDGET


def test_the_switch(monkeypatch):
    cpu = torch.zeros(1)
    monkeypatch.delenv(fused_kernels.SWITCH, raising=False)
    assert not fused_kernels_available(cpu)
    with fused_kernels_forced():
        assert fused_kernels_available(cpu)
        monkeypatch.setenv(fused_kernels.SWITCH, '0')
        assert not fused_kernels_available(cpu)
        monkeypatch.setenv(fused_kernels.SWITCH, '1')
        monkeypatch.setattr(fused_kernels, '_triton_kernels', lambda: None)
        assert not fused_kernels_available(cpu)
    with pytest.raises(ValueError, match='fused kernels compute the masks'):
        fused_masked_distance_kernel(kernel_factors('snell', 2, 2, seed=0), 0.5, 'topk')


def test_the_fast_fake_check_answers_as_is_fake():
    """Plain tensors and parameters skip ``is_fake``'s Python checks; fake and functional ones still reach it."""
    from torch._subclasses.fake_tensor import FakeTensorMode, is_fake
    real = torch.zeros(2)
    tensors = [real, torch.nn.Parameter(real.clone()), torch._to_functional_tensor(real)]
    with FakeTensorMode() as mode:
        fake = mode.from_tensor(real)
        tensors += [fake, torch.nn.Parameter(fake)]
    answers = [fused_kernels._maybe_fake(t) for t in tensors]
    assert answers == [is_fake(t) for t in tensors] == [False, False, False, True, True]
    with fused_kernels_forced():
        assert fused_kernels_available(real) == (fused_kernels._triton_kernels() is not None)
        assert not fused_kernels_available(fake)


def test_without_triton_the_fused_path_is_unavailable(monkeypatch):
    monkeypatch.setitem(sys.modules, 'triton', None)  # `import triton` raises ImportError
    monkeypatch.delitem(sys.modules, KERNELS_MODULE, raising=False)
    monkeypatch.delattr(snella_seg.snella, '_triton_kernels', raising=False)
    monkeypatch.setattr(fused_kernels, '_triton_kernels', fused_kernels._triton_kernels.__wrapped__)
    with fused_kernels_forced():
        assert not fused_kernels_available(torch.zeros(1))


def test_in_a_subprocess_with_the_interpreter():
    if INTERPRETED:
        pytest.skip('the interpreter runs in this process')
    result = subprocess.run([sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider', __file__],
                            env={**os.environ, 'TRITON_INTERPRET': '1'}, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:]


@in_the_interpreter
def test_the_layer_takes_the_fused_path_where_it_is_available_for_the_built_in_masks(monkeypatch):
    """masked_distance_kernel dispatches: fused for 'magnitude' and 'binary', eager for a straight-through mask, for
    fake tensors and with SNELLA_FUSED_KERNELS=0; a layer's training step agrees with eager's."""
    from snella_seg.snella import SNELLALinear
    launches = []
    launch = fused_kernels._launch
    monkeypatch.setattr(fused_kernels, '_launch', lambda *args, **meta: launches.append(1) or launch(*args, **meta))
    factors = kernel_factors('snella', 6, 9, seed=3)
    with fused_kernels_forced():
        for name in ('magnitude', 'binary'):
            launches.clear()
            masked_distance_kernel(factors, 0.5, get_mask(name))
            assert launches, name
        launches.clear()
        masked_distance_kernel(factors, 0.5, Mask('straight', magnitude_scale, straight_through=True))
        monkeypatch.setenv(fused_kernels.SWITCH, '0')
        masked_distance_kernel(factors, 0.5, get_mask('magnitude'))
        monkeypatch.delenv(fused_kernels.SWITCH)
        from torch._subclasses.fake_tensor import FakeTensorMode
        with FakeTensorMode() as mode:
            masked_distance_kernel([mode.from_tensor(f) for f in factors], 0.5, get_mask('magnitude'))
        assert not launches

    def step(fused: bool):
        torch.manual_seed(0)
        layer = SNELLALinear(torch.nn.Linear(12, 18), rank=4, sparsity=0.4, split=3)
        inputs = torch.randn(5, 12)
        with fused_kernels_forced() if fused else torch.enable_grad():
            layer(inputs).square().sum().backward()
        return [p.grad for p in layer.parameters() if p.requires_grad]

    launches.clear()
    fused_grads = step(True)
    assert launches
    for fused_grad, eager_grad in zip(fused_grads, step(False)):
        assert torch.allclose(fused_grad, eager_grad, rtol=1e-4, atol=1e-5 * float(eager_grad.abs().max()))


def test_use_fused_switches_the_path_and_restores_the_enclosing_choice():
    cpu = torch.zeros(1)
    with fused_kernels_forced():
        with fused_kernels.use_fused(False):
            assert not fused_kernels_available(cpu)
            with fused_kernels.use_fused(True):
                assert fused_kernels_available(cpu)
            assert not fused_kernels_available(cpu)
        assert fused_kernels_available(cpu)


@in_the_interpreter
@pytest.mark.parametrize('mask', ['magnitude', 'binary'])
@pytest.mark.parametrize('kernel', ['snell', 'snella'])
def test_updates_built_in_one_launch_match_eager_and_their_rebuild_is_bitwise_equal(kernel, mask):
    """q, k and v of a projection, one zeroing nothing, in one build launch with W0 added, and their gradients."""
    rows, cols, sparsities = 19, 150, [0.3, 0.0, 0.9]
    factor_lists = [kernel_factors(kernel, rows, cols, seed=seed) for seed in (1, 2, 3)]
    weight = torch.randn(3 * cols, rows, generator=torch.Generator().manual_seed(5))
    upstream = torch.randn(3 * cols, rows, generator=torch.Generator().manual_seed(6))
    batch = fused_kernels.factor_batch(factor_lists)
    with torch.no_grad():
        full, thresholds, own = fused_kernels.fused_layer_weight(batch, sparsities, mask, weight)
        rebuilt, _, _ = fused_kernels.fused_layer_weight(batch, sparsities, mask, weight, thresholds, reselect=False)
    assert torch.equal(rebuilt, full) and full.is_contiguous()
    assert own[1] is None and all(own[u] is not None for u in (0, 2))
    grads = fused_kernels.fused_layer_factor_grads(batch, sparsities, mask, thresholds, upstream.T)
    at = 0
    for update, (factors, sparsity) in enumerate(zip(factor_lists, sparsities)):
        block = slice(update * cols, (update + 1) * cols)
        eager, eager_threshold, eager_grads = built_with_gradients(eager_kernel, factors, sparsity, mask,
                                                                   upstream[block].T)
        assert (own[update] is None) == (eager_threshold is None)
        delta = full[block] - weight[block]
        agree = (delta.T != 0) == (eager != 0)
        if eager_threshold is not None:
            assert torch.allclose(own[update], eager_threshold, rtol=RTOL, atol=ATOL)
            assert near_threshold(kernel_matrix(kernel, *factors), eager_threshold)[~agree].all()
        assert torch.allclose(full[block].T[agree], (weight[block].T + eager)[agree], rtol=RTOL, atol=ATOL)
        if agree.all():
            for grad, eager_grad in zip(grads[at:at + len(factors)], eager_grads):
                assert torch.allclose(grad, eager_grad, rtol=RTOL, atol=GRAD_ATOL * float(eager_grad.abs().max()))
        at += len(factors)
    assert at == len(grads)


@in_the_interpreter
@pytest.mark.parametrize('split, launches', [(1, 10), (3, 17)])
def test_a_layer_costs_the_documented_launches_and_matches_eager(split, launches, monkeypatch):
    """A fused layer's training step: forward 5 (4 for W0 + ΔW, the linear), backward 5 (X^T G, the factors'
    gradients in 2, the rebuild, the input's gradient); three updates share every kernel but the selection (2 each)
    and add a stack per kind of factor."""
    from dispatch_counter import kernels_as_on_a_gpu
    from snella_seg.snella import SNELLALinear

    def step(fused: bool):
        torch.manual_seed(0)
        layer = SNELLALinear(torch.nn.Linear(12, 18), rank=4, sparsity=0.4, split=split)
        inputs = torch.randn(5, 12, requires_grad=True)
        upstream = torch.randn(5, 18)
        with kernels_as_on_a_gpu(), fused_kernels_forced(), fused_kernels.use_fused(fused):
            with LaunchCounter(monkeypatch) as counter:
                output = layer(inputs)
                output.backward(upstream)
        return output.detach(), [inputs.grad] + [p.grad for p in layer.parameters() if p.requires_grad], counter

    fused_output, fused_grads, counter = step(True)
    eager_output, eager_grads, _ = step(False)
    counts = counter.take()
    assert not set(counts) & SYNC_OPERATORS, counts
    assert sum(counts.values()) == launches, counts
    assert counts['triton:build_kernel'] == 3 and counts['triton:grad_kernel'] == 1, counts
    assert torch.allclose(fused_output, eager_output, rtol=RTOL, atol=ATOL)
    for fused_grad, eager_grad in zip(fused_grads, eager_grads):
        assert torch.allclose(fused_grad, eager_grad, rtol=1e-4, atol=1e-5 * float(eager_grad.abs().max()))


@in_the_interpreter
@pytest.mark.parametrize('absorbed', ['gelu', 'layernorm'])
@pytest.mark.parametrize('drop_path', [0.0, 0.1])
def test_a_fused_layer_with_the_shipped_configs_settings_matches_eager(absorbed, drop_path):
    """As the shipped ViT configs train: an absorbed frozen activation or norm recomputed in backward, stochastic
    depth on the update branch (the layer then builds ΔW without W0), a token count that is no multiple of a tile."""
    from snella_seg.snella import SNELLALinear, absorb_activation

    def step(fused: bool):
        torch.manual_seed(0)
        layer = SNELLALinear(torch.nn.Linear(24, 3 * 20), rank=4, sparsity=0.7, split=3, drop_path=drop_path).train()
        module = torch.nn.GELU() if absorbed == 'gelu' else torch.nn.LayerNorm(24).requires_grad_(False)
        absorb_activation(module, layer)
        for factor in layer.factor_parameters():
            torch.nn.init.normal_(factor.data)
        inputs = torch.randn(2, 37, 24, requires_grad=True)
        upstream = torch.randn(2, 37, 60)
        with fused_kernels_forced(), fused_kernels.use_fused(fused):
            output = layer(inputs)
            output.backward(upstream)
        return [output.detach(), inputs.grad] + [p.grad for p in layer.parameters() if p.requires_grad]

    for fused, eager in zip(step(True), step(False)):
        assert torch.allclose(fused, eager, rtol=1e-4, atol=1e-5 * float(eager.abs().max()))


def test_a_launch_runs_on_the_device_of_its_tensors(monkeypatch):
    """Triton launches on the current CUDA device, not on its arguments': a model on cuda:1 while cuda:0 is current
    (``init_model(..., device='cuda:1')``) must have its device made current, or the kernel reads another GPU's
    memory on another stream."""
    current = [0]

    @contextlib.contextmanager
    def device(index):
        current.append(index)
        try:
            yield
        finally:
            current.pop()
    monkeypatch.setattr(torch.cuda, 'current_device', lambda: current[-1])
    monkeypatch.setattr(torch.cuda, 'device', device)
    ran_on = []

    class Kernel:
        def __getitem__(self, grid):
            return lambda *args, **meta: ran_on.append(current[-1])

    class Factor:  # a CUDA tensor's device, without a GPU
        def __init__(self, index):
            self.device = torch.device('cuda', index)
    fused_kernels._launch(Kernel(), (1,), Factor(1), 3, BLOCK=8)
    fused_kernels._launch(Kernel(), (1,), Factor(0), 3, BLOCK=8)
    fused_kernels._launch(Kernel(), (1,), torch.zeros(1), 3, BLOCK=8)  # the interpreter's CPU tensors
    assert ran_on == [1, 0, 0] and current == [0]


@in_the_interpreter
@pytest.mark.parametrize('kernel', ['snell', 'snella'])
def test_factors_other_than_float32_take_the_eager_path(kernel, monkeypatch):
    """The kernels read float32 factors only; masked_distance_kernel takes any dtype cdist does (float64 here), so
    such factors must stay on the eager path instead of failing in the kernels (or on a GPU, in their compiler)."""
    launches = []
    launch = fused_kernels._launch
    monkeypatch.setattr(fused_kernels, '_launch', lambda *args, **meta: launches.append(1) or launch(*args, **meta))
    factors = [f.double() for f in kernel_factors(kernel, 5, 7, seed=2)]
    upstream = torch.randn(5, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    eager, eager_threshold, eager_grads = built_with_gradients(eager_kernel, factors, 0.3, 'magnitude', upstream)
    with fused_kernels_forced():
        built, threshold, grads = built_with_gradients(eager_kernel, factors, 0.3, 'magnitude', upstream)
    assert not launches
    assert built.dtype == torch.float64 and torch.equal(built, eager) and torch.equal(threshold, eager_threshold)
    for grad, eager_grad in zip(grads, eager_grads):
        assert torch.equal(grad, eager_grad)
