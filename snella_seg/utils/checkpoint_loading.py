"""Load every local checkpoint without arbitrary unpickling, mmengine's own training checkpoints included.

torch >= 2.6 loads with ``weights_only=True`` by default, which refuses mmengine checkpoints (their message hub
holds ``HistoryBuffer`` objects and numpy arrays), so plain mmengine can neither resume nor test them. Instead of
falling back to full unpickling, we allow exactly the few classes those checkpoints contain; a file that needs
anything else is refused with a message that says so. ``.safetensors`` files load too.
"""
import importlib
import os.path as osp
from types import ModuleType

import numpy as np
import torch
from mmengine.logging.history_buffer import HistoryBuffer
from mmengine.runner.checkpoint import CheckpointLoader

# numpy 2 renamed its internal package ``numpy.core`` to ``numpy._core`` (numpy 1.x has only the first; numpy 2
# keeps it as an alias that warns on access). A pickle records the name used by the numpy that wrote it.
NUMPY_CORE_PACKAGES = ('numpy._core', 'numpy.core')
NUMPY_ARRAY_REBUILDERS = ('scalar', '_reconstruct')


def numpy_multiarray() -> ModuleType:
    """The installed numpy's ``multiarray`` module, under the package name that numpy version uses."""
    package = NUMPY_CORE_PACKAGES[0] if int(np.__version__.split('.')[0]) >= 2 else NUMPY_CORE_PACKAGES[1]
    return importlib.import_module(f'{package}.multiarray')


def _numpy_rebuilders_under_both_names() -> list:
    """numpy's array-rebuilding functions, allowed under both package names, so checkpoints written under numpy
    1.x load under numpy 2 and the other way round."""
    multiarray = numpy_multiarray()
    return [(getattr(multiarray, name), f'{package}.multiarray.{name}')
            for package in NUMPY_CORE_PACKAGES for name in NUMPY_ARRAY_REBUILDERS]


# What mmengine's checkpoints (meta, message hub, optimizer, schedulers) are made of, beyond tensors and
# containers: objects, or (object, name in the pickle) pairs. builtins.getattr only fetches attributes; the
# weights-only unpickler still refuses to call anything outside this list.
RUN_CHECKPOINT_GLOBALS = [HistoryBuffer, np.ndarray, np.dtype, getattr] + _numpy_rebuilders_under_both_names()
RUN_CHECKPOINT_GLOBALS += [type(np.dtype(t)) for t in ('float64', 'float32', 'int64', 'int32', 'bool')]


def _pickled_name(allowed) -> str:
    if isinstance(allowed, tuple):
        return allowed[1]
    return f'{allowed.__module__}.{allowed.__qualname__}'


class UnsafeCheckpointError(RuntimeError):
    """A checkpoint holds Python objects that a weights-only load does not allow."""


def load_checkpoint_safely(filename: str, map_location=None):
    """``torch.load`` with ``weights_only=True`` plus the classes mmengine checkpoints need; or safetensors."""
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f'checkpoint {filename} does not exist')
    if filename.endswith('.safetensors'):
        from safetensors.torch import load_file
        device = map_location if isinstance(map_location, str) else 'cpu'
        return load_file(filename, device=device)
    try:
        with torch.serialization.safe_globals(RUN_CHECKPOINT_GLOBALS):
            return torch.load(filename, map_location=map_location, weights_only=True)
    except Exception as err:  # the unpickler raises UnpicklingError or RuntimeError depending on the opcode
        if 'Weights only load failed' not in str(err) and 'Unsupported global' not in str(err):
            raise
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(filename)
        allowed = {_pickled_name(g) for g in RUN_CHECKPOINT_GLOBALS}
        raise UnsafeCheckpointError(
            f'{filename} contains Python objects that are not loaded without arbitrary code execution: '
            f'{sorted(set(unsafe) - allowed)}. snella-seg never unpickles checkpoints fully. If the file is a '
            'plain state dict from a source you trust, re-save it as weights only (torch.save(model.state_dict()))'
            ' or as .safetensors.') from None


def load_from_local_safely(filename: str, map_location=None):
    return load_checkpoint_safely(filename, map_location)


# Replace mmengine's local-file loader (plain torch.load) for resume, load_from and init_cfg alike.
CheckpointLoader.register_scheme(prefixes='', loader=load_from_local_safely, force=True)
