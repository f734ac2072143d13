"""Fold SNELLA, or any method whose update is a weight delta, into plain weights.

The result is a checkpoint and config that run no SNELLA code.
"""
import copy
import os
import os.path as osp
from typing import Dict, Optional, Tuple, Union

import torch
from mmengine.config import Config
from torch import nn

from ..apis.inference import init_model, resolve_config
from ..models.peft_backbone import PEFTBackbone
from ..snella import merge_snella
from .deltas import snella_backbone_of
from .merged_config import merged_config, plain_backbone_config


def merge_weights(model: nn.Module) -> nn.Module:
    """Fold the segmentor's backbone updates into its base weights, in place.

    Every ΔW of a SNELLABackbone, or the update of a PEFTBackbone's method (``Method.merged``): the segmentor's
    backbone becomes the plain inner backbone, whose outputs equal the adapted model's.

    Args:
        model: An mmseg segmentor whose backbone is a SNELLABackbone or a PEFTBackbone.

    Returns:
        ``model``.

    Raises:
        NotMergeableError: When the PEFTBackbone's method is not a weight delta (adapters, prompts), saying why.
        ValueError: When the backbone is neither wrapper.
    """
    if isinstance(model.backbone, PEFTBackbone):
        model.backbone = model.backbone.merged_backbone()
    else:
        model.backbone = merge_snella(snella_backbone_of(model).backbone)
    return model


def rename_backbone_weights(state: Dict[str, torch.Tensor], prefix: Optional[str]) -> Dict[str, torch.Tensor]:
    """Return the state dict with the backbone's ``model.`` keys under ``prefix`` (see ``plain_backbone_config``)."""
    if prefix is None:
        return state
    old = 'backbone.model.'
    return {(f'backbone.{prefix}{k[len(old):]}' if k.startswith(old) else k): v for k, v in state.items()}


def merge_checkpoint(config: Union[str, Config], checkpoint: str, out_dir: str,
                     cfg_options: Optional[dict] = None) -> Tuple[str, str]:
    """Write ``merged.pth`` and ``merged_config.py``: a plain mmseg checkpoint and its config.

    ``merged.pth`` has every ΔW folded into its base weight (``merge_weights``); ``merged_config.py``
    (``merged_config``) has the inner backbone in place of the wrapper, with no SNELLA hooks or constructor. No
    SNELLA code runs in the merged model, so inference costs exactly what the frozen backbone costs. A plain-ViT
    ``TimmViT`` becomes mmseg's own ``TIMMBackbone``: config and checkpoint then need only mmseg and timm. What mmseg
    cannot build (SAM encoders, see ``TimmViT.mmseg_timm_backbone``) and snella_seg's own data types (Kvasir-SEG)
    keep ``custom_imports=['snella_seg']``, with a warning that names them.

    Args:
        config: A config file or Config.
        checkpoint: The trained checkpoint.
        out_dir: Where the two files go.
        cfg_options: Overrides (``--cfg-options``) for the merged model and the written config.

    Returns:
        The paths of ``merged.pth`` and ``merged_config.py``.

    Raises:
        FileExistsError: ``out_dir`` holds a ``merged.pth`` already (nothing is written).
        NotMergeableError: The method's update is not a weight delta (adapters, prompts).
    """
    if osp.exists(osp.join(out_dir, 'merged.pth')):
        raise FileExistsError(f'{out_dir}/merged.pth exists; choose another output folder (nothing was written)')
    cfg = resolve_config(config, cfg_options)
    model = merge_weights(init_model(copy.deepcopy(cfg), checkpoint, device='cpu'))  # init_model edits its config
    backbone_cfg, renamed_prefix = plain_backbone_config(model.backbone, cfg.model.backbone.backbone)
    os.makedirs(out_dir, exist_ok=True)
    checkpoint_path = osp.join(out_dir, 'merged.pth')
    torch.save({'state_dict': rename_backbone_weights(model.state_dict(), renamed_prefix),
                'meta': {'dataset_meta': getattr(model, 'dataset_meta', None)}}, checkpoint_path)
    config_path = osp.join(out_dir, 'merged_config.py')
    merged_config(cfg, backbone_cfg).dump(config_path)
    return checkpoint_path, config_path
