"""Deployment: fold SNELLA into plain weights, or export what training produced (a few MB) as safetensors."""
import copy
import json
import logging
import os
import os.path as osp
from typing import Any, Dict, Optional, Set, Tuple, Union

import torch
from mmengine.config import Config
from mmengine.logging import print_log
from mmseg.apis import init_model
from mmseg.registry import (DATASETS, HOOKS, MODELS, OPTIM_WRAPPER_CONSTRUCTORS, OPTIM_WRAPPERS,
                            TRANSFORMS)
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from .apis.inference import resolve_config
from .models.backbones.vit import TIMM_BACKBONE_PREFIX
from .models.snella_backbone import FINGERPRINT_KEY, encode_fingerprint
from .snella import SNELLAConfig, merge_snella
from .snella.config import INFERENCE_OPTIONS
from .snella.layer import DELTA_KEY

# Exported files: 'snella-trained-v2' holds every trained tensor (updates, neck, heads); 'snella-deltas-v1' files,
# written before, hold the SNELLA updates only.
EXPORT_FORMAT = 'snella-trained-v2'
DELTAS_ONLY_FORMAT = 'snella-deltas-v1'


def _snella_backbone(model: nn.Module):
    backbone = model.backbone
    if type(backbone).__name__ != 'SNELLABackbone':
        raise ValueError(f'the model\'s backbone is {type(backbone).__name__}, not SNELLABackbone: '
                         'nothing to merge or export')
    return backbone


def merge_checkpoint(config: Union[str, Config], checkpoint: str, out_dir: str,
                     cfg_options: Optional[dict] = None) -> Tuple[str, str]:
    """Write ``merged.pth`` (a plain mmseg checkpoint: every ΔW folded into its base weight) and
    ``merged_config.py`` (the inner backbone in place of SNELLABackbone, no SNELLA hooks or constructor).

    ``config`` is a file or a Config; ``cfg_options`` override it (``--cfg-options``) for the model that is
    merged and in the written config. No SNELLA code runs in the merged model, so inference costs exactly what the
    frozen backbone costs. A plain-ViT ``TimmViT`` becomes mmseg's own ``TIMMBackbone``: config and checkpoint then
    need only mmseg and timm. What mmseg cannot build (SAM encoders, see ``TimmViT.mmseg_timm_backbone``) and
    snella_seg's own data types (Kvasir-SEG) keep ``custom_imports=['snella_seg']``, with a warning that names them.
    """
    if osp.exists(osp.join(out_dir, 'merged.pth')):
        raise FileExistsError(f'{out_dir}/merged.pth exists; choose another output folder (nothing was written)')
    cfg = resolve_config(config, cfg_options)
    model = init_model(copy.deepcopy(cfg), checkpoint, device='cpu')  # init_model edits the config it is given
    wrapper = _snella_backbone(model)
    model.backbone = merge_snella(wrapper.backbone)
    cfg.model.backbone, renamed_prefix = _plain_backbone(model.backbone, cfg.model.backbone.backbone)
    state = model.state_dict()
    if renamed_prefix is not None:
        old = 'backbone.model.'
        state = {(f'backbone.{renamed_prefix}{k[len(old):]}' if k.startswith(old) else k): v for k, v in state.items()}
    ours = _snella_seg_types()
    cfg.custom_hooks = [h for h in cfg.get('custom_hooks', []) if h.get('type') not in ours]
    if cfg.optim_wrapper.get('constructor') in ours:
        cfg.optim_wrapper.pop('constructor')
    cfg.load_from = None
    _set_snella_seg_import(cfg, _types_in(cfg.to_dict(), ours))
    os.makedirs(out_dir, exist_ok=True)
    checkpoint_path = osp.join(out_dir, 'merged.pth')
    torch.save({'state_dict': state, 'meta': {'dataset_meta': getattr(model, 'dataset_meta', None)}},
               checkpoint_path)
    config_path = osp.join(out_dir, 'merged_config.py')
    cfg.dump(config_path)
    return checkpoint_path, config_path


def _plain_backbone(backbone: nn.Module, backbone_cfg: dict) -> Tuple[dict, Optional[str]]:
    """(config, new prefix for the backbone's ``model.`` keys or None) of the merged backbone."""
    to_mmseg = getattr(backbone, 'mmseg_timm_backbone', None)
    if to_mmseg is not None:
        try:
            return to_mmseg(), TIMM_BACKBONE_PREFIX
        except ValueError as reason:
            print_log(f'the merged backbone stays {type(backbone).__name__}, which needs snella_seg: {reason}',
                      logger='current', level=logging.WARNING)
    plain = copy.deepcopy(backbone_cfg)
    plain['pretrained'] = None  # the merged checkpoint holds every weight
    return plain, None


def _snella_seg_types() -> Set[str]:
    """Type names that only snella_seg registers."""
    registries = (MODELS, HOOKS, DATASETS, TRANSFORMS, OPTIM_WRAPPERS, OPTIM_WRAPPER_CONSTRUCTORS)
    return {name for registry in registries for name, obj in registry.module_dict.items()
            if obj.__module__.split('.')[0] == 'snella_seg'}


def _types_in(node: Any, names: Set[str]) -> Set[str]:
    if isinstance(node, dict):
        found = {node['type']} if isinstance(node.get('type'), str) and node['type'] in names else set()
        return found.union(*(_types_in(value, names) for value in node.values()))
    if isinstance(node, (list, tuple)):
        return set().union(*(_types_in(value, names) for value in node))
    return set()


def _set_snella_seg_import(cfg: Config, needed: Set[str]) -> None:
    """Import snella_seg only for the types that still need it, and say so."""
    imports = [m for m in cfg.get('custom_imports', {}).get('imports', []) if m.split('.')[0] != 'snella_seg']
    if needed:
        imports.append('snella_seg')
        print_log(f'merged_config.py imports snella_seg for {sorted(needed)}', logger='current',
                  level=logging.WARNING)
    if imports:
        cfg.custom_imports = dict(imports=imports, allow_failed_imports=False)
    else:
        cfg.pop('custom_imports', None)


def delta_state(model: nn.Module) -> Dict[str, torch.Tensor]:
    """The SNELLA tensors of a model (factors, kernel scalars, sparsity buffers), by state-dict key."""
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if DELTA_KEY in k}


def trained_state(model: nn.Module) -> Dict[str, torch.Tensor]:
    """Every tensor of the model's state dict but the frozen backbone weights: the SNELLA updates and everything
    outside the backbone (neck, heads, their buffers), by state-dict key."""
    frozen = {f'backbone.backbone.{k}' for k in _snella_backbone(model).backbone.state_dict() if DELTA_KEY not in k}
    frozen.add(f'backbone.{FINGERPRINT_KEY}')
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if k not in frozen}


def export_deltas(model: nn.Module, path: str) -> str:
    """Save what training produced (``trained_state``): with the frozen base's pretrained file, ``load_deltas``
    rebuilds the model exactly. The metadata (plain JSON strings) holds every SNELLA option (``SNELLAConfig``,
    compared on loading), the fingerprint of the frozen base the model holds (sha256 and file name, checked on
    loading) and the dataset's classes and palette."""
    wrapper = _snella_backbone(model)
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
    """The SNELLA options that change predictions (``INFERENCE_OPTIONS``) on which the file's config and the
    model's differ, as ``'option: file X vs model Y'`` text; empty when they agree or the file records none."""
    if 'snella' not in metadata:
        return ''
    try:
        recorded = SNELLAConfig.from_dict(json.loads(metadata['snella']), origin=f'the metadata of {path}')
    except (TypeError, ValueError) as reason:  # e.g. written with a kernel this installation does not register
        print_log(f'the SNELLA options recorded in {path} are not readable here ({reason}); only its tensors are '
                  'checked against the model', logger='current', level=logging.WARNING)
        return ''
    differences = recorded.differences(_snella_backbone(model).snella_config, INFERENCE_OPTIONS)
    return ', '.join(f'{name}: file {in_file!r} vs model {in_model!r}' for name, in_file, in_model in differences)


def load_deltas(model: nn.Module, path: str) -> None:
    """Load a file written by ``export_deltas`` into a model built from the same config (``init_model(config)``).

    A file whose recorded SNELLA options differ from the model's where predictions depend on them (targets, rank,
    kernel, mask, split_qkv) is refused, naming each option: a mask, for one, leaves every tensor's shape alone.
    The frozen backbone comes from the configured pretrained file (loaded here if the model has not loaded it
    yet); one other than the file was trained on is refused, as for delta-only checkpoints
    (``model.backbone.check_base=False`` overrides). Files of the older 'snella-deltas-v1' format hold only the
    SNELLA updates: they load with a warning, the neck and heads keep the model's weights.
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
