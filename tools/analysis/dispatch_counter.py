"""Operators and host syncs of a piece of code, counted where PyTorch dispatches them, on any device.

A GPU runs ahead of Python only while nothing reads a device value back to the host: every ``.item()``,
``float(t)``, ``bool(t)``, ``torch.nonzero`` or boolean-mask index drains the stream. Counting those operators on
the CPU finds each such sync the same code would make on a GPU, without one. The operator count measures launch
overhead: on a GPU each operator is at least one kernel launch, so code whose count grows with the number of
layers (a loop over thousands of small tensors) costs time that no batch size hides.

Kernel launches are counted apart (``launches``), as a CUDA device would launch them: one per operator that runs a
kernel, leaving out views and metadata operators (``view``, ``transpose``, ``expand``, ...), uninitialised
allocations and operators on host-resident tensors (the CPU ``step`` counts of a non-capturable AdamW: host work,
and reading them is a host read, neither a launch nor a sync); one per chunk of a foreach operator
(``aten::_foreach_*``), which launches a kernel per group of tensors, not per tensor (``foreach_launches``); and
every Triton kernel launched while the counter is active (the interpreter's, with ``TRITON_INTERPRET=1``, included),
counted as one launch whatever the interpreter does inside it. ``phase`` splits the launches by the part of a step
that made them (``launches_by_phase``).

SNELLA's kernels take another path on the CPU (a sampled selection with host reads) than on a GPU (``topk``, no host
read): ``kernels_as_on_a_gpu`` makes any device take the GPU's, so that the counts are the ones a GPU would see.
"""
from collections import Counter
from contextlib import contextmanager
from typing import Callable, Dict, Iterable, Iterator, List, Tuple
from unittest import mock

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from snella_seg.snella import kernels

# Operators whose result a CUDA device has to hand back to the host before Python can go on.
SYNC_OPERATORS = frozenset({
    'Tensor.tolist',  # counted as calls: see DispatchCounter.__enter__
    'Tensor.numpy',
    'aten::_local_scalar_dense',  # .item(), float(t), int(t), bool(t), .tolist()
    'aten::is_nonzero',
    'aten::nonzero',
    'aten::masked_select',
    'aten::equal',
    'aten::allclose',
    'aten::unique_dim',
    'aten::_unique2',
})
BOOLEAN_INDEX = 'aten::index (boolean mask)'
HOST_READ = 'aten::_local_scalar_dense (host-resident tensor)'
BOOLEAN_INDEX_PUT = 'aten::index_put_ (boolean mask)'
# Operators that only describe memory (a view's ``is_view`` says so too) or hand out uninitialised memory: no kernel.
NO_KERNEL_OPERATORS = frozenset({
    'aten::view', 'aten::_unsafe_view', 'aten::reshape', 'aten::_reshape_alias', 'aten::t', 'aten::transpose',
    'aten::permute', 'aten::select', 'aten::slice', 'aten::unbind', 'aten::expand', 'aten::as_strided',
    'aten::alias', 'aten::detach', 'aten::unsqueeze', 'aten::squeeze', 'aten::split', 'aten::split_with_sizes',
    'aten::chunk', 'aten::narrow', 'aten::lift_fresh', 'aten::empty', 'aten::empty_like', 'aten::empty_strided',
    'aten::new_empty', 'aten::new_empty_strided', 'aten::resize_', 'aten::set_',
})
TRITON_PREFIX = 'triton::'
HOST_WORK = ' (host-resident tensors)'
# How torch's CUDA foreach operators group tensors into kernel launches: ATen's MultiTensorApply.cuh
# (``DepthToMaxConfig``, ``multi_tensor_apply``; the same in torch 2.4 to 2.11): at most ``max_tensors[depth - 1]``
# tensors (``max_tensors_scalarlist`` for operators taking a list of scalars) and ``max_blocks`` chunks of
# ``CHUNK_SIZE`` elements per launch, ``depth`` being the number of tensor lists (an out-of-place operator's output
# list among them). With CUDA 12.1 or later on a Volta or newer GPU, kernels take 32 KB of arguments ('large'),
# else 4 KB ('small').
FOREACH_CHUNK_SIZE = 65536
FOREACH_LIMITS = {
    'large': {'max_tensors': (770, 448, 336, 252, 210), 'max_tensors_scalarlist': (672, 448, 336, 252, 210),
              'max_blocks': 2240},
    'small': {'max_tensors': (110, 64, 48, 36, 30), 'max_tensors_scalarlist': (96, 64, 48, 36, 30),
              'max_blocks': 320},
}


def _triton_kernel_classes() -> Tuple[type, ...]:
    """The classes whose ``run`` launches a Triton kernel, compiled or interpreted; none without Triton."""
    try:
        from triton.runtime.interpreter import InterpretedFunction
        from triton.runtime.jit import JITFunction
    except ImportError:
        return ()
    return JITFunction, InterpretedFunction


def _has_boolean_index(indices) -> bool:
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices or ())


def _tensors(values) -> Iterator[torch.Tensor]:
    """The tensors among operator arguments, inside lists too."""
    for value in values:
        if isinstance(value, torch.Tensor):
            yield value
        elif isinstance(value, (list, tuple)):
            yield from _tensors(value)


def foreach_launches(numels: Iterable[int], depth: int, scalar_list: bool = False, limits: str = 'large') -> int:
    """Kernel launches of one CUDA foreach operator over tensors of these sizes, as ``multi_tensor_apply`` groups them.

    Args:
        numels (Iterable[int]): the elements of each tensor of the first list (empty tensors launch nothing).
        depth (int): the tensor lists the kernel reads and writes, 1 to 5.
        scalar_list (bool): the operator takes a list of scalars, one per tensor.
        limits (str): ``'large'`` or ``'small'`` kernel arguments (``FOREACH_LIMITS``).

    Returns:
        int: the launches.
    """
    limit = FOREACH_LIMITS[limits]
    max_tensors = limit['max_tensors_scalarlist' if scalar_list else 'max_tensors'][min(depth, 5) - 1]
    launches = blocks = tensors = 0
    for numel in numels:
        if not numel:
            continue
        tensors += 1
        chunks = -(-numel // FOREACH_CHUNK_SIZE)
        for chunk in range(chunks):
            blocks += 1
            if (tensors == max_tensors and chunk == chunks - 1) or blocks == limit['max_blocks']:
                launches += 1
                blocks = 0
                tensors = 0 if chunk == chunks - 1 else 1
    return launches + (blocks > 0)


class DispatchCounter(TorchDispatchMode):
    """Counts every operator run inside ``with DispatchCounter() as counter:`` (autograd's backward included).

    ``counts`` maps operator names (``'aten::mm'``, ``'triton::<kernel>'``) to how often they ran; ``total`` sums
    them; ``host_syncs`` counts those that need the host to wait for the device (``SYNC_OPERATORS``, boolean-mask
    indexing); ``launches`` those that launch a kernel (``NO_KERNEL_OPERATORS`` and views left out, Triton
    kernels in).

    ``launch_counts`` maps operator names to the kernels they launched and ``phase_launches`` phases to those; the
    phase is ``phase`` at the time (``'forward'`` unless changed, e.g. by ``in_phase``).

    Args:
        host_resident (Iterable[torch.Tensor]): tensors that stay in host memory on a GPU too, so reading them syncs
            nothing and computing on them launches nothing: e.g. the ``step`` counts of a non-fused, non-capturable
            AdamW, which torch keeps on the CPU for that reason.
        foreach_limits (str): the foreach launch limits of the GPU counted for (``FOREACH_LIMITS``).
    """

    def __init__(self, host_resident: Iterable[torch.Tensor] = (), foreach_limits: str = 'large') -> None:
        super().__init__()
        self.counts: Counter = Counter()
        self.launch_counts: Counter = Counter()
        self.phase_launches: Dict[str, Counter] = {}
        self.phase = 'forward'
        self.foreach_limits = foreach_limits
        self.host_resident = {id(t) for t in host_resident}
        self._unpatch: List[Callable[[], None]] = []
        self._inside_triton = 0

    def _patch(self, owner: type, name: str, replacement: Callable) -> None:
        """``owner.name = replacement`` until the counter is left, then what it was (an inherited one inherited)."""
        if name in owner.__dict__:
            original = owner.__dict__[name]
            self._unpatch.append(lambda: setattr(owner, name, original))
        else:
            self._unpatch.append(lambda: delattr(owner, name))
        setattr(owner, name, replacement)

    def _count_triton_launches(self) -> None:
        """One launch per ``run`` of a Triton kernel (not its warm-up); what runs inside it is the kernel's own."""
        for kernel_class in _triton_kernel_classes():
            def counted_run(kernel, *args, _original=kernel_class.run, **kwargs):
                if not kwargs.get('warmup'):
                    name = getattr(getattr(kernel, 'fn', None), '__name__', type(kernel).__name__)
                    self.counts[TRITON_PREFIX + name] += 1
                    self._launched(TRITON_PREFIX + name, 1)
                self._inside_triton += 1
                try:
                    return _original(kernel, *args, **kwargs)
                finally:
                    self._inside_triton -= 1
            self._patch(kernel_class, 'run', counted_run)

    def __enter__(self):
        # On the CPU, .tolist() and .numpy() read memory without dispatching an operator; on a GPU they copy to
        # the host first, which syncs: count the calls themselves.
        for method in ('tolist', 'numpy'):
            def counted(tensor, *args, _original=getattr(torch.Tensor, method), _name=f'Tensor.{method}', **kwargs):
                if id(tensor) not in self.host_resident and not self._inside_triton:
                    self.counts[_name] += 1
                return _original(tensor, *args, **kwargs)
            self._patch(torch.Tensor, method, counted)
        self._count_triton_launches()
        return super().__enter__()

    def __exit__(self, *exc):
        while self._unpatch:
            self._unpatch.pop()()
        return super().__exit__(*exc)

    @contextmanager
    def in_phase(self, name: str) -> Iterator[None]:
        """Count what runs inside the ``with`` block as phase ``name``, then go back to the enclosing phase.

        Args:
            name (str): the phase, e.g. ``'backward'``.

        Yields:
            None
        """
        enclosing, self.phase = self.phase, name
        try:
            yield
        finally:
            self.phase = enclosing

    def _launched(self, name: str, launches: int) -> None:
        self.launch_counts[name] += launches
        self.phase_launches.setdefault(self.phase, Counter())[name] += launches

    def _on_host(self, args, kwargs) -> bool:
        """Whether an operator computes on host-resident tensors alone (0-d wrapped scalars aside)."""
        tensors = list(_tensors([*args, *(kwargs or {}).values()]))
        resident = [id(t) in self.host_resident for t in tensors]
        return any(resident) and all(r or t.dim() == 0 for r, t in zip(resident, tensors))

    def _kernel_launches(self, func, name: str, args, kwargs) -> int:
        """The kernels an operator launches on a GPU: 0, 1, or a foreach operator's chunks."""
        if name in NO_KERNEL_OPERATORS or func.is_view or name == HOST_READ or name.startswith('profiler::'):
            return 0  # profiler:: marks a range for the profiler (the optimizer's step): no kernel
        if not name.startswith('aten::_foreach_'):
            return 1
        schema = func._schema
        lists = [a for a in schema.arguments if str(a.type) == 'List[Tensor]']
        outputs = 0 if name.endswith('_') else sum(str(r.type) == 'List[Tensor]' for r in schema.returns)
        values = dict(zip([a.name for a in schema.arguments], args), **(kwargs or {}))
        first = values.get(lists[0].name, ()) if lists else ()
        scalar_list = any(str(a.type) == 'List[number]' for a in schema.arguments)
        return foreach_launches([t.numel() for t in first], len(lists) + outputs, scalar_list, self.foreach_limits)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if self._inside_triton:  # the interpreter's own copies: on a GPU, the launch is the kernel
            return func(*args, **(kwargs or {}))
        name = func._schema.name
        if name == 'aten::_local_scalar_dense' and id(args[0]) in self.host_resident:
            name = HOST_READ
        elif name in ('aten::index', 'aten::index_put', 'aten::index_put_') and _has_boolean_index(args[1]):
            name = BOOLEAN_INDEX if name == 'aten::index' else BOOLEAN_INDEX_PUT
        elif self.host_resident and self._on_host(args, kwargs):
            name += HOST_WORK
        self.counts[name] += 1
        launches = 0 if name.endswith(HOST_WORK) else self._kernel_launches(func, name, args, kwargs)
        if launches:
            self._launched(name, launches)
        return func(*args, **(kwargs or {}))

    @property
    def total(self) -> int:
        """int: operators run, host syncs included."""
        return sum(self.counts.values())

    @property
    def launches(self) -> int:
        """int: kernels launched on a GPU, Triton's and each foreach chunk included; views and allocations left out."""
        return sum(self.launch_counts.values())

    def launches_by_phase(self) -> Dict[str, int]:
        """The launches by phase.

        Returns:
            Dict[str, int]: the kernels launched in each phase that launched any.
        """
        return {phase: sum(counts.values()) for phase, counts in self.phase_launches.items()}

    @property
    def triton_launches(self) -> int:
        """int: Triton kernels launched."""
        return sum(n for name, n in self.counts.items() if name.startswith(TRITON_PREFIX))

    @property
    def host_syncs(self) -> int:
        """int: operators run that make the host wait for the device."""
        return sum(self.syncs_by_operator().values())

    def syncs_by_operator(self) -> Dict[str, int]:
        """The host syncs by operator.

        Returns:
            Dict[str, int]: how often each host-syncing operator ran.
        """
        return {name: n for name, n in self.counts.items()
                if name in SYNC_OPERATORS or name in (BOOLEAN_INDEX, BOOLEAN_INDEX_PUT)}


@contextmanager
def kernels_as_on_a_gpu() -> Iterator[None]:
    """SNELLA's kernels as CUDA runs them, on any device: selection through ``topk`` and no host reads.

    The memory estimate needs it (the CPU's sampled selection gathers a band whose size depends on values fake
    tensors do not have), and the step profile counts with it what a GPU would sync.

    Yields:
        None: inside the ``with`` block, ``kernels.host_reads_are_free`` answers False for every tensor.
    """
    with mock.patch.object(kernels, 'host_reads_are_free', lambda values: False):
        yield
