"""Deployment: fold SNELLA into plain weights, or export only the updates (a few MB) as safetensors."""
import copy
import json
import os
import os.path as osp
from typing import Dict, Tuple

import torch
from mmengine.config import Config
from mmseg.apis import init_model
from safetensors.torch import load_file, save_file
from torch import nn

from .snella import merge_snella

DELTA_KEY = '.deltas.'


def _snella_backbone(model: nn.Module):
    backbone = model.backbone
    if type(backbone).__name__ != 'SNELLABackbone':
        raise ValueError(f'the model\'s backbone is {type(backbone).__name__}, not SNELLABackbone: nothing to merge')
    return backbone


def merge_checkpoint(config: str, checkpoint: str, out_dir: str) -> Tuple[str, str]:
    """Write ``merged.pth`` (a plain mmseg checkpoint: every ΔW folded into its base weight) and
    ``merged_config.py`` (the inner backbone in place of SNELLABackbone, no SNELLA hooks or constructor).

    The merged model runs with mmseg alone plus the ``TimmViT`` wrapper around timm; no SNELLA code runs in it,
    so inference costs exactly what the frozen backbone costs.
    """
    if osp.exists(osp.join(out_dir, 'merged.pth')):
        raise FileExistsError(f'{out_dir}/merged.pth exists; choose another output folder (nothing was written)')
    model = init_model(config, checkpoint, device='cpu')
    wrapper = _snella_backbone(model)
    model.backbone = merge_snella(wrapper.backbone)
    cfg = Config.fromfile(config)
    inner = copy.deepcopy(cfg.model.backbone.backbone)
    inner['pretrained'] = None  # the merged checkpoint holds every weight
    cfg.model.backbone = inner
    cfg.custom_hooks = [h for h in cfg.get('custom_hooks', []) if h.get('type') != 'SNELLAAllocatorHook']
    cfg.optim_wrapper.pop('constructor', None)
    cfg.load_from = None
    os.makedirs(out_dir, exist_ok=True)
    checkpoint_path = osp.join(out_dir, 'merged.pth')
    torch.save({'state_dict': model.state_dict(), 'meta': {'dataset_meta': getattr(model, 'dataset_meta', None)}},
               checkpoint_path)
    config_path = osp.join(out_dir, 'merged_config.py')
    cfg.dump(config_path)
    return checkpoint_path, config_path


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
