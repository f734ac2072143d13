"""Load every local checkpoint without arbitrary unpickling, mmengine's own training checkpoints included.

torch >= 2.6 loads with ``weights_only=True`` by default, which refuses mmengine checkpoints (their message hub
holds ``HistoryBuffer`` objects and numpy arrays), so plain mmengine can neither resume nor test them. Instead of
falling back to full unpickling, we allow exactly the few classes those checkpoints contain; a file that needs
anything else is refused with a message that says so. ``.safetensors`` files load too.
"""
import os.path as osp

import numpy as np
import torch
from mmengine.logging.history_buffer import HistoryBuffer
from mmengine.runner.checkpoint import CheckpointLoader

# What mmengine's checkpoints (meta, message hub, optimizer, schedulers) are made of, beyond tensors and
# containers. builtins.getattr only fetches attributes; the weights-only unpickler still refuses to call anything
# outside this list.
RUN_CHECKPOINT_GLOBALS = [HistoryBuffer, np.ndarray, np.dtype, np._core.multiarray.scalar,
                          np._core.multiarray._reconstruct, getattr]
RUN_CHECKPOINT_GLOBALS += [type(np.dtype(t)) for t in ('float64', 'float32', 'int64', 'int32', 'bool')]


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
        allowed = {f'{g.__module__}.{g.__qualname__}' for g in RUN_CHECKPOINT_GLOBALS}
        raise UnsafeCheckpointError(
            f'{filename} contains Python objects that are not loaded without arbitrary code execution: '
            f'{sorted(set(unsafe) - allowed)}. snella-seg never unpickles checkpoints fully. If the file is a '
            'plain state dict from a source you trust, re-save it as weights only (torch.save(model.state_dict()))'
            ' or as .safetensors.') from None


def load_from_local_safely(filename: str, map_location=None):
    return load_checkpoint_safely(filename, map_location)


# Replace mmengine's local-file loader (plain torch.load) for resume, load_from and init_cfg alike.
CheckpointLoader.register_scheme(prefixes='', loader=load_from_local_safely, force=True)
