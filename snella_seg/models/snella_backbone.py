"""``SNELLABackbone``: wrap any registered backbone, freeze it and inject SNELLA updates into chosen Linears."""
import copy
from typing import Any, Dict, Optional

import torch
from mmengine.logging import MMLogger
from mmengine.model import BaseModule
from mmseg.registry import MODELS

from ..snella import inject_snella
from ..snella.inject import InjectionReport, summarize_names
from ..snella.layer import DELTA_KEY
from .absorption import absorb_timm_block_inputs

SNELLA_OPTIONS = ('targets', 'rank', 'kernel', 'sparsity', 'mask', 'dropout', 'drop_path', 'checkpoint',
                  'split_qkv', 'absorb_activations')
SAVE_MODES = ('auto', 'delta', 'full')


def _has_pretrained_source(backbone: torch.nn.Module) -> bool:
    """Whether the inner backbone loads weights from a file in ``init_weights`` (its own way or mmengine's)."""
    if getattr(backbone, 'pretrained', None):
        return True
    init_cfg = getattr(backbone, 'init_cfg', None)
    cfgs = init_cfg if isinstance(init_cfg, list) else [init_cfg]
    return any(isinstance(c, dict) and c.get('type') == 'Pretrained' for c in cfgs)


@MODELS.register_module()
class SNELLABackbone(BaseModule):
    """A frozen backbone with trainable SNELLA updates in the Linear layers that ``snella['targets']`` match.

    With ``absorb_activations`` (default) adapted layers of timm ViT/SAM blocks also compute the frozen LayerNorm
    or MLP activation before them, so that tensor is stored once instead of twice (same outputs, less memory;
    ``merge_snella`` undoes it).
    The inner backbone is built here, but its pretrained weights load in ``init_weights`` (or, at test time,
    when a delta-only checkpoint arrives), never in ``__init__``. ``save='delta'`` writes only the updates and
    their sparsities (a few MB for ViT-L); ``'full'`` writes the frozen weights too; ``'auto'`` saves deltas
    when the inner backbone has a pretrained file to rebuild from, else everything.
    """

    def __init__(self, backbone: Dict[str, Any], snella: Dict[str, Any], save: str = 'auto',
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(init_cfg)
        options = dict(snella)
        unknown = sorted(set(options) - set(SNELLA_OPTIONS))
        if unknown:
            raise ValueError(f'unknown SNELLA option(s) {unknown} in model.backbone.snella; '
                             f'valid options: {list(SNELLA_OPTIONS)}')
        if 'targets' not in options:
            raise ValueError('model.backbone.snella needs "targets": regular expressions of the Linear layers '
                             r'to adapt, e.g. [r".*blocks\.\d+\.attn\.qkv", r".*blocks\.\d+\.mlp\.fc\d"]')
        if save not in SAVE_MODES:
            raise ValueError(f'save must be one of {SAVE_MODES}, got {save!r}')
        self.snella_cfg = copy.deepcopy(options)  # as configured, for exported metadata
        self.backbone = MODELS.build(backbone)
        targets = options.pop('targets')
        absorb = options.pop('absorb_activations', True)
        self.report: InjectionReport = inject_snella(self.backbone, targets, **options)
        absorbed = absorb_timm_block_inputs(self.backbone) if absorb else []
        self.delta_only = save == 'delta' or (save == 'auto' and _has_pretrained_source(self.backbone))
        self._bases_loaded = False
        MMLogger.get_current_instance().info(
            str(self.report) + (f'; {len(absorbed)} frozen norms/activations are computed inside the adapted '
                                f'layer after them ({summarize_names(absorbed)})' if absorbed else ''))
        self._register_state_dict_hook(self._drop_frozen_weights)
        self._register_load_state_dict_pre_hook(self._check_incoming, with_module=True)
        self.register_load_state_dict_post_hook(self._accept_missing_frozen_weights)
        self._absent_frozen_keys: set = set()

    def init_weights(self) -> None:
        super().init_weights()
        self._bases_loaded = True

    def forward(self, x: torch.Tensor):
        return self.backbone(x)

    # ------------------------------------------------------------------------------- delta-only checkpoints
    def _drop_frozen_weights(self, module, state_dict, prefix, local_metadata) -> None:
        if not self.delta_only:
            return
        inner = prefix + 'backbone.'
        for key in [k for k in state_dict if k.startswith(inner) and DELTA_KEY not in k]:
            del state_dict[key]

    def _check_incoming(self, module, state_dict, prefix, local_metadata, strict, missing_keys,
                        unexpected_keys, error_msgs) -> None:
        inner = prefix + 'backbone.'
        incoming = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(inner)}
        if not incoming:
            return
        own = {f'backbone.{k}': v for k, v in self.backbone.state_dict(keep_vars=True).items() if DELTA_KEY in k}
        own_deltas = set(own)
        in_deltas = {k for k in incoming if DELTA_KEY in k}
        shape_errors = [f'{k}: checkpoint {tuple(incoming[k].shape)} vs model {tuple(own[k].shape)}'
                        for k in sorted(in_deltas & own_deltas) if incoming[k].shape != own[k].shape]
        if in_deltas and (in_deltas != own_deltas or shape_errors):
            missing = sorted(own_deltas - in_deltas)
            extra = sorted(in_deltas - own_deltas)
            raise ValueError(
                'the SNELLA checkpoint does not fit this backbone: '
                f'{len(missing)} update tensors missing (e.g. {missing[:3]}), {len(extra)} unknown '
                f'(e.g. {extra[:3]}), {len(shape_errors)} of another shape (e.g. {shape_errors[:3]}). '
                'It was saved with another backbone, rank or target list: use the config it was trained with.')
        delta_only = all(DELTA_KEY in k for k in incoming)
        if delta_only and not self._bases_loaded:
            # Test-time loading: the frozen weights are not in the checkpoint, they come from the pretrained file.
            if not _has_pretrained_source(self.backbone):
                raise ValueError('this checkpoint holds only SNELLA updates, but the backbone config names no '
                                 'pretrained file to rebuild the frozen weights from: set the backbone\'s '
                                 'pretrained path (or init_cfg) to the weights it was trained on')
            self.init_weights()
        if delta_only:
            self._absent_frozen_keys = {f'{inner}{k}' for k in self.backbone.state_dict() if DELTA_KEY not in k}

    def _accept_missing_frozen_weights(self, module, incompatible_keys) -> None:
        """A delta-only checkpoint misses the frozen weights by design: they came from the pretrained file."""
        incompatible_keys.missing_keys[:] = [
            k for k in incompatible_keys.missing_keys if k not in self._absent_frozen_keys]
        self._absent_frozen_keys = set()
