"""Export what training produced (a few MB) as safetensors, and load it back onto the frozen base."""
import json
import logging
import os
from typing import Dict

import torch
from mmengine.logging import print_log
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from ..models.snella_backbone import FINGERPRINT_KEY, encode_fingerprint
from ..snella import SNELLAConfig
from ..snella.config import INFERENCE_OPTIONS
from ..snella.layer import DELTA_KEY

# Exported files: 'snella-trained-v2' holds every trained tensor (updates, neck, heads); 'snella-deltas-v1' files,
# written before, hold the SNELLA updates only.
EXPORT_FORMAT = 'snella-trained-v2'
DELTAS_ONLY_FORMAT = 'snella-deltas-v1'


def snella_backbone_of(model: nn.Module) -> nn.Module:
    """Return the segmentor's ``SNELLABackbone``, the one holder of SNELLA options and the frozen base's fingerprint.

    Args:
        model: An mmseg segmentor.

    Returns:
        ``model.backbone``.

    Raises:
        ValueError: If the backbone is not a ``SNELLABackbone`` (nothing to merge or export), naming it.
    """
    backbone = model.backbone
    if type(backbone).__name__ != 'SNELLABackbone':
        raise ValueError(f'the model\'s backbone is {type(backbone).__name__}, not SNELLABackbone: '
                         'nothing to merge or export')
    return backbone


def delta_state(model: nn.Module) -> Dict[str, torch.Tensor]:
    """Collect the SNELLA tensors of a model: what the older delta-only files held.

    Args:
        model: A model adapted with SNELLA.

    Returns:
        The factors, kernel scalars and sparsity buffers, detached on the CPU, by state-dict key.
    """
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if DELTA_KEY in k}


def trained_state(model: nn.Module) -> Dict[str, torch.Tensor]:
    """Collect every tensor training changed: the state dict without the frozen backbone weights.

    Args:
        model: A segmentor whose backbone is a ``SNELLABackbone``.

    Returns:
        The SNELLA updates and everything outside the backbone (neck, heads, their buffers), detached on the CPU,
        by state-dict key.

    Raises:
        ValueError: If the backbone is not a ``SNELLABackbone``.
    """
    frozen = {f'backbone.backbone.{k}' for k in snella_backbone_of(model).backbone.state_dict() if DELTA_KEY not in k}
    frozen.add(f'backbone.{FINGERPRINT_KEY}')
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if k not in frozen}


def export_deltas(model: nn.Module, path: str) -> str:
    """Save what training produced (``trained_state``) as safetensors.

    With the frozen base's pretrained file, ``load_deltas`` rebuilds the model exactly. The metadata (plain JSON
    strings) holds every SNELLA option (``SNELLAConfig``, compared on loading), the fingerprint of the frozen base
    the model holds (sha256 and file name, checked on loading) and the dataset's classes and palette.

    Args:
        model: A segmentor whose backbone is a ``SNELLABackbone``.
        path: The file to write; it gets the mode ``open()`` would give it.

    Returns:
        ``path``.

    Raises:
        ValueError: If the backbone is not a ``SNELLABackbone``.
    """
    wrapper = snella_backbone_of(model)
    metadata = {'format': EXPORT_FORMAT, 'snella': json.dumps(wrapper.snella_config.to_dict()),
                'base_fingerprint': json.dumps(wrapper.base_fingerprint())}
    dataset_meta = getattr(model, 'dataset_meta', None)
    if dataset_meta:
        metadata['dataset_meta'] = json.dumps(dataset_meta)
    save_file(trained_state(model), path, metadata=metadata)
    # safetensors writes through a private temporary file (mode 0600): give the file the mode open() would
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)
    return path


def _config_differences(model: nn.Module, metadata: Dict[str, str], path: str) -> str:
    """Compare the SNELLA options that change predictions (``INFERENCE_OPTIONS``) of a file and a model.

    Returns:
        ``'option: file X vs model Y'`` text for each difference; empty when they agree, or when the file records
        no options or options this installation cannot read (with a warning).
    """
    if 'snella' not in metadata:
        return ''
    try:
        recorded = SNELLAConfig.from_dict(json.loads(metadata['snella']), origin=f'the metadata of {path}')
    except (TypeError, ValueError) as reason:  # e.g. written with a kernel this installation does not register
        print_log(f'the SNELLA options recorded in {path} are not readable here ({reason}); only its tensors are '
                  'checked against the model', logger='current', level=logging.WARNING)
        return ''
    differences = recorded.differences(snella_backbone_of(model).snella_config, INFERENCE_OPTIONS)
    return ', '.join(f'{name}: file {in_file!r} vs model {in_model!r}' for name, in_file, in_model in differences)


def load_deltas(model: nn.Module, path: str) -> None:
    """Load a file written by ``export_deltas`` into a model built from the same config (``init_model(config)``).

    A file whose recorded SNELLA options differ from the model's where predictions depend on them (targets, rank,
    kernel, mask, split_qkv) is refused, naming each option: a mask, for one, leaves every tensor's shape alone.
    The frozen backbone comes from the configured pretrained file (loaded here if the model has not loaded it
    yet); one other than the file was trained on is refused, as for delta-only checkpoints
    (``model.backbone.check_base=False`` overrides). Files of the older 'snella-deltas-v1' format hold only the
    SNELLA updates: they load with a warning, the neck and heads keep the model's weights.

    Args:
        model: A segmentor built from the config the file was trained with; its state and ``dataset_meta`` are
            updated in place.
        path: A safetensors file written by ``export_deltas``.

    Raises:
        ValueError: If the file was not written by ``export_deltas``, or does not fit the model (SNELLA options,
            tensor names or shapes), or the model's backbone is not a ``SNELLABackbone``.
    """
    with safe_open(path, framework='pt') as opened:
        metadata = opened.metadata() or {}
    file_format = metadata.get('format')
    if file_format not in (EXPORT_FORMAT, DELTAS_ONLY_FORMAT):
        raise ValueError(f'{path} is not a file written by export_deltas (format {file_format!r}, expected '
                         f'{EXPORT_FORMAT!r}): pass the safetensors file that tools/merge_snella.py --export-deltas '
                         'wrote')
    config_differences = _config_differences(model, metadata, path)
    incoming = load_file(path)
    own = trained_state(model) if file_format == EXPORT_FORMAT else delta_state(model)
    missing, extra = sorted(set(own) - set(incoming)), sorted(set(incoming) - set(own))
    shapes = [f'{k}: file {tuple(incoming[k].shape)} vs model {tuple(own[k].shape)}'
              for k in sorted(set(own) & set(incoming)) if incoming[k].shape != own[k].shape]
    if missing or extra or shapes or config_differences:
        raise ValueError(f'{path} does not fit this model: {config_differences or "same SNELLA options"}; '
                         f'{len(missing)} tensors missing (e.g. {missing[:3]}), {len(extra)} unknown (e.g. '
                         f'{extra[:3]}), {len(shapes)} of another shape (e.g. {shapes[:3]}). Build the model from the '
                         'config it was trained with (backbone, SNELLA options, heads).')
    if file_format == DELTAS_ONLY_FORMAT:
        print_log(f'{path} holds only SNELLA updates ({DELTAS_ONLY_FORMAT}): the neck and heads keep the weights '
                  'this model has; re-export from the checkpoint to include them', logger='current',
                  level=logging.WARNING)
    if 'base_fingerprint' in metadata:  # checked against the frozen base by SNELLABackbone as the tensors load
        incoming[f'backbone.{FINGERPRINT_KEY}'] = encode_fingerprint(json.loads(metadata['base_fingerprint']))
    model.load_state_dict(incoming, strict=False)  # every key was checked above; frozen weights are absent
    if 'dataset_meta' in metadata:
        model.dataset_meta = json.loads(metadata['dataset_meta'])
