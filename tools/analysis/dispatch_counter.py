"""Operators and host syncs of a piece of code, counted where PyTorch dispatches them, on any device.

A GPU runs ahead of Python only while nothing reads a device value back to the host: every ``.item()``,
``float(t)``, ``bool(t)``, ``torch.nonzero`` or boolean-mask index drains the stream. Counting those operators on
the CPU finds each such sync the same code would make on a GPU, without one. The operator count measures launch
overhead: on a GPU each operator is at least one kernel launch, so code whose count grows with the number of
layers (a loop over thousands of small tensors) costs time that no batch size hides.

SNELLA's kernels take another path on the CPU (a sampled selection with host reads) than on a GPU (``topk``, no host
read): ``kernels_as_on_a_gpu`` makes any device take the GPU's, so that the counts are the ones a GPU would see.
"""
from collections import Counter
from contextlib import contextmanager
from typing import Callable, Dict, Iterable, Iterator, List
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


def _has_boolean_index(indices) -> bool:
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices or ())


class DispatchCounter(TorchDispatchMode):
    """Counts every operator run inside ``with DispatchCounter() as counter:`` (autograd's backward included).

    ``counts`` maps operator names (``'aten::mm'``) to how often they ran; ``total`` sums them; ``host_syncs``
    counts those that need the host to wait for the device (``SYNC_OPERATORS``, boolean-mask indexing).

    Args:
        host_resident (Iterable[torch.Tensor]): tensors that stay in host memory on a GPU too, so reading them syncs
            nothing: e.g. the ``step`` counts of a non-fused, non-capturable AdamW, which torch keeps on the CPU for
            that reason.
    """

    def __init__(self, host_resident: Iterable[torch.Tensor] = ()) -> None:
        super().__init__()
        self.counts: Counter = Counter()
        self.host_resident = {id(t) for t in host_resident}
        self._unpatch: List[Callable[[], None]] = []

    def __enter__(self):
        # On the CPU, .tolist() and .numpy() read memory without dispatching an operator; on a GPU they copy to
        # the host first, which syncs: count the calls themselves.
        for method in ('tolist', 'numpy'):
            original = getattr(torch.Tensor, method)

            def counted(tensor, *args, _original=original, _name=f'Tensor.{method}', **kwargs):
                if id(tensor) not in self.host_resident:
                    self.counts[_name] += 1
                return _original(tensor, *args, **kwargs)
            setattr(torch.Tensor, method, counted)
            self._unpatch.append(lambda method=method, original=original: setattr(torch.Tensor, method, original))
        return super().__enter__()

    def __exit__(self, *exc):
        while self._unpatch:
            self._unpatch.pop()()
        return super().__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name
        if name == 'aten::_local_scalar_dense' and id(args[0]) in self.host_resident:
            name = HOST_READ
        elif name in ('aten::index', 'aten::index_put', 'aten::index_put_') and _has_boolean_index(args[1]):
            name = BOOLEAN_INDEX if name == 'aten::index' else BOOLEAN_INDEX_PUT
        self.counts[name] += 1
        return func(*args, **(kwargs or {}))

    @property
    def total(self) -> int:
        """int: operators run, host syncs included."""
        return sum(self.counts.values())

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
