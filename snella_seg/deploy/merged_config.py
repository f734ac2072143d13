"""The config of a merged model: the plain backbone in place of SNELLABackbone, nothing of SNELLA's training left."""
import copy
import logging
from typing import Any, Optional, Set, Tuple

from mmengine.config import Config
from mmengine.logging import print_log
from mmseg.registry import DATASETS, HOOKS, MODELS, OPTIM_WRAPPER_CONSTRUCTORS, OPTIM_WRAPPERS, TRANSFORMS
from torch import nn

from ..models.backbones.vit import TIMM_BACKBONE_PREFIX


def plain_backbone_config(backbone: nn.Module, backbone_cfg: dict) -> Tuple[dict, Optional[str]]:
    """Give the merged backbone a config that needs no SNELLA code, and mmseg's own type where one fits.

    A plain-ViT ``TimmViT`` becomes mmseg's own ``TIMMBackbone`` (``TimmViT.mmseg_timm_backbone``); any other
    backbone keeps its config, without the pretrained file, since the merged checkpoint holds every weight.

    Args:
        backbone: The merged backbone module (SNELLA updates absorbed).
        backbone_cfg: Its config in the training config.

    Returns:
        The merged backbone's config, and the key prefix its ``model.`` weights take under it (None if the keys
        stay as they are).
    """
    to_mmseg = getattr(backbone, 'mmseg_timm_backbone', None)
    if to_mmseg is not None:
        try:
            return to_mmseg(), TIMM_BACKBONE_PREFIX
        except ValueError as reason:
            print_log(f'the merged backbone stays {type(backbone).__name__}, which needs snella_seg: {reason}',
                      logger='current', level=logging.WARNING)
    plain = copy.deepcopy(backbone_cfg)
    plain['pretrained'] = None
    return plain, None


def merged_config(cfg: Config, backbone_cfg: dict) -> Config:
    """Derive the merged model's config from the training config, so that it runs without snella_seg if it can.

    The copy has no snella_seg hook or optimizer constructor and no ``load_from``, and keeps
    ``custom_imports=['snella_seg']`` only while a snella_seg type (e.g. a SAM ``TimmViT``, the Kvasir-SEG
    dataset) remains, with a warning naming them.

    Args:
        cfg: The training config; left unchanged.
        backbone_cfg: The merged backbone's config (``plain_backbone_config``).

    Returns:
        The merged model's config.
    """
    merged = copy.deepcopy(cfg)
    merged.model.backbone = backbone_cfg
    ours = _snella_seg_types()
    merged.custom_hooks = [h for h in merged.get('custom_hooks', []) if h.get('type') not in ours]
    if merged.optim_wrapper.get('constructor') in ours:
        merged.optim_wrapper.pop('constructor')
    merged.load_from = None
    _set_snella_seg_import(merged, _types_in(merged.to_dict(), ours))
    return merged


def _snella_seg_types() -> Set[str]:
    """Return the type names that only snella_seg registers."""
    registries = (MODELS, HOOKS, DATASETS, TRANSFORMS, OPTIM_WRAPPERS, OPTIM_WRAPPER_CONSTRUCTORS)
    return {name for registry in registries for name, obj in registry.module_dict.items()
            if obj.__module__.split('.')[0] == 'snella_seg'}


def _types_in(node: Any, names: Set[str]) -> Set[str]:
    """Return the ``type`` values of a config tree that are among ``names``."""
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
