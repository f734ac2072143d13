"""Deployment: fold SNELLA into plain weights, or export only the updates (a few MB) as safetensors."""
import copy
import json
import logging
import os
import os.path as osp
from typing import Any, Dict, Optional, Set, Tuple

import torch
from mmengine.config import Config
from mmengine.logging import print_log
from mmseg.apis import init_model
from mmseg.registry import (DATASETS, HOOKS, MODELS, OPTIM_WRAPPER_CONSTRUCTORS, OPTIM_WRAPPERS,
                            TRANSFORMS)
from safetensors.torch import load_file, save_file
from torch import nn

from .models.backbones.vit import TIMM_BACKBONE_PREFIX
from .snella import merge_snella
from .snella.layer import DELTA_KEY


def _snella_backbone(model: nn.Module):
    backbone = model.backbone
    if type(backbone).__name__ != 'SNELLABackbone':
        raise ValueError(f'the model\'s backbone is {type(backbone).__name__}, not SNELLABackbone: nothing to merge')
    return backbone


def merge_checkpoint(config: str, checkpoint: str, out_dir: str) -> Tuple[str, str]:
    """Write ``merged.pth`` (a plain mmseg checkpoint: every ΔW folded into its base weight) and
    ``merged_config.py`` (the inner backbone in place of SNELLABackbone, no SNELLA hooks or constructor).

    No SNELLA code runs in the merged model, so inference costs exactly what the frozen backbone costs. A plain-ViT
    ``TimmViT`` becomes mmseg's own ``TIMMBackbone``: config and checkpoint then need only mmseg and timm. What
    mmseg cannot build (SAM encoders, see ``TimmViT.mmseg_timm_backbone``) and snella_seg's own data types
    (Kvasir-SEG) keep ``custom_imports=['snella_seg']``, with a warning that names them.
    """
    if osp.exists(osp.join(out_dir, 'merged.pth')):
        raise FileExistsError(f'{out_dir}/merged.pth exists; choose another output folder (nothing was written)')
    model = init_model(config, checkpoint, device='cpu')
    wrapper = _snella_backbone(model)
    model.backbone = merge_snella(wrapper.backbone)
    cfg = Config.fromfile(config)
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


def export_deltas(model: nn.Module, path: str) -> str:
    """Save only the SNELLA updates, with the SNELLA options in the file's metadata."""
    state = delta_state(model)
    if not state:
        raise ValueError('the model holds no SNELLA updates to export')
    metadata = {'format': 'snella-deltas-v1'}
    options = getattr(getattr(model, 'backbone', None), 'snella_cfg', None)
    if options is not None:
        metadata['snella'] = json.dumps(options)
    save_file(state, path, metadata=metadata)
    # safetensors writes through a private temporary file (mode 0600): give the file the mode open() would
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)
    return path


def load_deltas(model: nn.Module, path: str) -> None:
    """Load exported SNELLA updates into a model built with the same backbone and SNELLA options."""
    incoming = load_file(path)
    own = delta_state(model)
    missing, extra = sorted(set(own) - set(incoming)), sorted(set(incoming) - set(own))
    shapes = [f'{k}: file {tuple(incoming[k].shape)} vs model {tuple(own[k].shape)}'
              for k in sorted(set(own) & set(incoming)) if incoming[k].shape != own[k].shape]
    if missing or extra or shapes:
        raise ValueError(f'{path} does not fit this model: {len(missing)} update tensors missing (e.g. '
                         f'{missing[:3]}), {len(extra)} unknown (e.g. {extra[:3]}), {len(shapes)} of another shape '
                         f'(e.g. {shapes[:3]}). Build the model with the backbone, rank and targets it was trained '
                         'with.')
    # Copy tensor by tensor: the frozen weights stay whatever the model already holds (its pretrained init).
    targets = dict(model.named_parameters())
    targets.update(model.named_buffers())
    with torch.no_grad():
        for key, value in incoming.items():
            targets[key].copy_(value)
