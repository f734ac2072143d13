"""Load every local checkpoint without arbitrary unpickling, mmengine's own training checkpoints included.

torch >= 2.6 loads with ``weights_only=True`` by default, which refuses mmengine checkpoints (their message hub
holds ``HistoryBuffer`` objects and numpy arrays), so plain mmengine can neither resume nor test them. Instead of
falling back to full unpickling, we allow exactly the few classes those checkpoints contain; a file that needs
anything else is refused with a message that says so. ``.safetensors`` files load too.

A file the user trusts loads with full unpickling when torch's own switch ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` is
set (``1``, ``y``, ``yes`` or ``true``); each such load logs a warning naming the file.
"""
import importlib
import logging
import os
import os.path as osp
from types import ModuleType
from typing import Any, Callable, Dict, Union

import numpy as np
import torch
from mmengine.logging import print_log
from mmengine.logging.history_buffer import HistoryBuffer
from mmengine.optim import scheduler as mmengine_schedulers
from mmengine.runner.checkpoint import CheckpointLoader

# numpy 2 renamed its internal package ``numpy.core`` to ``numpy._core`` (numpy 1.x has only the first; numpy 2
# keeps it as an alias that warns on access). A pickle records the name used by the numpy that wrote it.
NUMPY_CORE_PACKAGES = ('numpy._core', 'numpy.core')
NUMPY_ARRAY_REBUILDERS = ('scalar', '_reconstruct')


def numpy_multiarray() -> ModuleType:
    """Import the installed numpy's ``multiarray`` module, under the package name that numpy version uses.

    Returns:
        The ``multiarray`` module.
    """
    package = NUMPY_CORE_PACKAGES[0] if int(np.__version__.split('.')[0]) >= 2 else NUMPY_CORE_PACKAGES[1]
    return importlib.import_module(f'{package}.multiarray')


def _numpy_rebuilders_under_both_names() -> list:
    """Return numpy's array-rebuilding functions as (function, name) pairs, under both package names.

    So checkpoints written under numpy 1.x load under numpy 2 and the other way round.
    """
    multiarray = numpy_multiarray()
    return [(getattr(multiarray, name), f'{package}.multiarray.{name}')
            for package in NUMPY_CORE_PACKAGES for name in NUMPY_ARRAY_REBUILDERS]


def _mmengine_scheduler_classes() -> list:
    """Return mmengine's parameter scheduler classes, whose states training checkpoints hold.

    A scheduler's state is its ``__dict__``; OneCycle's holds its annealing function, a static method that pickle
    stores as ``getattr(OneCycleParamScheduler, name)``.
    """
    return [getattr(mmengine_schedulers, name) for name in mmengine_schedulers.__all__
            if isinstance(getattr(mmengine_schedulers, name), type)]


# numpy scalars a metric or a hook may leave in the message hub: every numeric and boolean dtype.
NUMPY_SCALAR_DTYPES = np.typecodes['AllInteger'] + np.typecodes['AllFloat'] + '?'

# What mmengine's checkpoints (meta, message hub, optimizer, schedulers) are made of, beyond tensors and
# containers: objects, or (object, name in the pickle) pairs. builtins.getattr only fetches attributes; the
# weights-only unpickler still refuses to call anything outside this list, and an allowed class is at most
# created empty and given attributes, none of its code runs.
RUN_CHECKPOINT_GLOBALS = [HistoryBuffer, np.ndarray, np.dtype, getattr] + _numpy_rebuilders_under_both_names()
RUN_CHECKPOINT_GLOBALS += list({type(np.dtype(code)) for code in NUMPY_SCALAR_DTYPES})
RUN_CHECKPOINT_GLOBALS += _mmengine_scheduler_classes()

# torch's documented switch back to full unpickling; torch.load ignores it when weights_only is passed, as here.
FULL_UNPICKLING_VARIABLE = 'TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD'
TRUE_VALUES = ('1', 'y', 'yes', 'true')


def _pickled_name(allowed) -> str:
    if isinstance(allowed, tuple):
        return allowed[1]
    return f'{allowed.__module__}.{allowed.__qualname__}'


def full_unpickling_requested() -> bool:
    """Whether the user set ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` to a true value, as torch reads it.

    Returns:
        True when checkpoints are to be loaded with full unpickling.
    """
    return os.environ.get(FULL_UNPICKLING_VARIABLE, '0').lower() in TRUE_VALUES


class UnsafeCheckpointError(RuntimeError):
    """A checkpoint holds Python objects that a weights-only load does not allow."""


def _refusal_advice(pickled_names: set) -> str:
    """Return what to do with a refused file, the likelier case first.

    A training checkpoint (it holds mmengine's message hub) is resumed with the escape, pretrained weights are
    re-saved as tensors only.
    """
    resume = (f'If it is a training checkpoint you trust (--resume, load_from), load it with full unpickling by '
              f'setting {FULL_UNPICKLING_VARIABLE}=1 for that command (each such load logs a warning).')
    pretrained = ('If it is pretrained weights from a source you trust, re-save the tensors alone, once: '
                  'state_dict = torch.load(path, weights_only=False) (keep only its tensors), then '
                  'torch.save(state_dict, new_path) or safetensors.torch.save_file(state_dict, new_path), and point '
                  'the config at the new .pth or .safetensors file.')
    if _pickled_name(HistoryBuffer) in pickled_names:
        return f'It looks like a training checkpoint. {resume} {pretrained}'
    return f'{pretrained} {resume}'


def load_checkpoint_safely(filename: str,
                           map_location: Union[None, str, torch.device, Dict[str, str], Callable] = None) -> Any:
    """Load a local checkpoint without arbitrary unpickling, or a ``.safetensors`` file.

    ``torch.load`` runs with ``weights_only=True`` plus the classes mmengine's own checkpoints need; with
    ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` set, it unpickles fully and logs a warning.

    Args:
        filename: path of a ``.pth``-style or ``.safetensors`` file (``~`` is expanded).
        map_location: as for ``torch.load``; for safetensors, a device string (default ``'cpu'``).

    Returns:
        The loaded object (a dict of tensors for safetensors).

    Raises:
        FileNotFoundError: the file does not exist.
        UnsafeCheckpointError: the file holds Python objects outside the allowed list; the message names them and
            says what to do for a training checkpoint and for pretrained weights.
    """
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f'checkpoint {filename} does not exist')
    if filename.endswith('.safetensors'):
        from safetensors.torch import load_file
        device = map_location if isinstance(map_location, str) else 'cpu'
        return load_file(filename, device=device)
    if full_unpickling_requested():
        print_log(f'{FULL_UNPICKLING_VARIABLE} is set: loading {filename} with full unpickling, which runs any '
                  'code the file holds; do so only for files you trust', logger='current', level=logging.WARNING)
        return torch.load(filename, map_location=map_location, weights_only=False)
    try:
        with torch.serialization.safe_globals(RUN_CHECKPOINT_GLOBALS):
            return torch.load(filename, map_location=map_location, weights_only=True)
    except Exception as err:  # the unpickler raises UnpicklingError or RuntimeError depending on the opcode
        if 'Weights only load failed' not in str(err) and 'Unsupported global' not in str(err):
            raise
        pickled_names = set(torch.serialization.get_unsafe_globals_in_checkpoint(filename))
        unsafe = sorted(pickled_names - {_pickled_name(g) for g in RUN_CHECKPOINT_GLOBALS})
        raise UnsafeCheckpointError(
            f'{filename} contains Python objects that are not loaded without arbitrary code execution: {unsafe}. '
            f'snella-seg does not unpickle checkpoints fully unless asked to. {_refusal_advice(pickled_names)}'
        ) from None


def load_from_local_safely(filename: str,
                           map_location: Union[None, str, torch.device, Dict[str, str], Callable] = None) -> Any:
    """Load a local file for mmengine's ``CheckpointLoader`` (resume, load_from, init_cfg) without unpickling it fully.

    Args:
        filename: path of the checkpoint.
        map_location: as for ``torch.load``.

    Returns:
        The loaded object, as ``load_checkpoint_safely`` returns it.

    Raises:
        FileNotFoundError: the file does not exist.
        UnsafeCheckpointError: the file holds Python objects outside the allowed list.
    """
    return load_checkpoint_safely(filename, map_location)


# Replace mmengine's local-file loader (plain torch.load) for resume, load_from and init_cfg alike.
CheckpointLoader.register_scheme(prefixes='', loader=load_from_local_safely, force=True)
