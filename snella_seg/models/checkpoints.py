"""The format-independent parts of reading pretrained weights.

Safe reading, resizing of position tables and the strict comparison of a state dict with a module.

Each backbone family's key layouts, conversion to timm's names and fitting live with the family
(``snella_seg/models/backbones/families/``); deciding whether a checkpoint fits a model is the caller's job, with
``compare_with_module`` listing what disagrees.
"""
import os
import re
import zipfile
from dataclasses import dataclass
from typing import Dict, List, Mapping, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..utils.checkpoint_loading import load_checkpoint_safely
from ..snella import SNELLALinear
from ..snella.layer import DELTA_KEY

CONTAINER_KEYS = ('state_dict', 'model', 'module')


def read_state_dict(path: str) -> Dict[str, Tensor]:
    """Tensors of a local ``.safetensors`` or torch file, unwrapped from ``state_dict``/``model``/``module``.

    Torch files load weights-only (plus the few classes of mmengine's training checkpoints): a file that needs
    arbitrary unpickling is refused with the fix, never executed.

    Args:
        path: A local file; nothing is downloaded.

    Returns:
        Its tensors by name (a ``module.`` prefix of DistributedDataParallel removed).

    Raises:
        FileNotFoundError: If the file does not exist.
        ValueError: If it is a TorchScript archive or holds no tensors.
        UnsafeCheckpointError: If reading it would need arbitrary unpickling.
    """
    path = os.path.expanduser(str(path))
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f'pretrained checkpoint {path!r} does not exist. Weights are read from local files only (nothing is '
            'downloaded): put the file there or set the backbone\'s `pretrained` to its path.')
    if _is_torchscript_archive(path):
        raise ValueError(
            f'{path!r} is a TorchScript archive (as OpenAI\'s CLIP release files are), which cannot be read '
            'weights-only. Convert it once to a state dict: python -c "import torch; torch.save(torch.jit.load('
            f'\'{path}\', map_location=\'cpu\').state_dict(), \'clip_state_dict.pth\')" and point pretrained at the '
            'new file, or use OpenCLIP\'s open_clip_pytorch_model.bin of the same model.')
    return _tensors_only(_unwrap_containers(load_checkpoint_safely(path, map_location='cpu')), path)


def _is_torchscript_archive(path: str) -> bool:
    """Return whether a torch zip file holds TorchScript code (``<archive>/code/...``), not only pickled tensors."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.split('/')[1:2] == ['code'] for name in archive.namelist())


def _unwrap_containers(loaded: object) -> object:
    while isinstance(loaded, Mapping):
        container = next((k for k in CONTAINER_KEYS if isinstance(loaded.get(k), Mapping)), None)
        if container is None:
            break
        loaded = loaded[container]
    return loaded


def _tensors_only(loaded: object, path: str) -> Dict[str, Tensor]:
    tensors = {k: v for k, v in loaded.items() if torch.is_tensor(v)} if isinstance(loaded, Mapping) else {}
    if not tensors:
        found = list(loaded)[:8] if isinstance(loaded, Mapping) else type(loaded).__name__
        raise ValueError(f'{path!r} holds no tensors where a state dict was expected (found {found})')
    if all(k.startswith('module.') for k in tensors):  # saved from a DistributedDataParallel wrapper
        tensors = {k[len('module.'):]: v for k, v in tensors.items()}
    return tensors


def rename_keys(state: Mapping[str, Tensor], rules: Sequence[Tuple[str, str]]) -> Dict[str, Tensor]:
    """Rename every key by regular-expression rules, applied in order (``re.sub`` each), as key layouts convert.

    Args:
        state: Tensors by name.
        rules: (pattern, replacement) pairs.

    Returns:
        The same tensors under the new names.
    """
    converted = {}
    for key, value in state.items():
        for pattern, replacement in rules:
            key = re.sub(pattern, replacement, key)
        converted[key] = value
    return converted


def resize_rel_pos(table: Tensor, rows: int) -> Tensor:
    """Resize a relative-position table to ``rows`` positions linearly, as SAM resizes its tables at run time.

    Args:
        table: The (positions, head_dim) table.
        rows: The positions wanted.

    Returns:
        The resized table, in the table's dtype.
    """
    resized = F.interpolate(table.float().T.unsqueeze(0), size=rows, mode='linear')
    return resized.squeeze(0).T.to(table.dtype).contiguous()


@dataclass
class Incompatibility:
    """How a state dict disagrees with a module: keys named as in the checkpoint.

    Args:
        missing: The module's keys absent from the state dict.
        unexpected: The state dict's keys the module lacks.
        shape_mismatches: One line per key present in both with other shapes.
    """
    missing: List[str]
    unexpected: List[str]
    shape_mismatches: List[str]

    def __bool__(self) -> bool:
        return bool(self.missing or self.unexpected or self.shape_mismatches)

    def describe(self, show: int = 5) -> str:
        """The disagreements, one indented line per kind.

        Args:
            show: How many keys of each kind to name.

        Returns:
            The lines joined by newlines.
        """
        parts = []
        for title, items in (('missing from the checkpoint', self.missing),
                             ('unexpected in the checkpoint', self.unexpected),
                             ('shape mismatches', self.shape_mismatches)):
            if items:
                more = f', ... {len(items) - show} more' if len(items) > show else ''
                parts.append(f'  {title} ({len(items)}): {", ".join(items[:show])}{more}')
        return '\n'.join(parts)


def plain_linear_names(module: nn.Module) -> Dict[str, str]:
    """The module's state-dict keys under the names a plain checkpoint uses; SNELLA update tensors are left out.

    A ``SNELLALinear`` stores its frozen Linear as ``X.base.weight``, which a checkpoint calls ``X.weight``.

    Args:
        module: A model, possibly with SNELLA layers.

    Returns:
        Plain checkpoint name -> the module's own state-dict key.
    """
    wrapped = {name for name, child in module.named_modules() if isinstance(child, SNELLALinear)}
    names = {}
    for key in module.state_dict(keep_vars=True):
        if DELTA_KEY in key:
            continue
        owner, _, leaf = key.rpartition('.')
        if owner.endswith('.base') and owner[:-len('.base')] in wrapped:
            names[f'{owner[:-len(".base")]}.{leaf}'] = key
        else:
            names[key] = key
    return names


def compare_with_module(module: nn.Module, state: Mapping[str, Tensor]) -> Incompatibility:
    """Missing, unexpected and wrongly shaped keys of ``state`` for ``module``, SNELLA updates excepted.

    Args:
        module: The model to load into.
        state: Weights under plain (checkpoint) names.

    Returns:
        Every disagreement; falsy when there is none.
    """
    own = module.state_dict(keep_vars=True)
    names = plain_linear_names(module)
    shapes = [f'{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[names[k]].shape)}'
              for k in names if k in state and state[k].shape != own[names[k]].shape]
    return Incompatibility(missing=[k for k in names if k not in state],
                           unexpected=[k for k in state if k not in names],
                           shape_mismatches=shapes)
