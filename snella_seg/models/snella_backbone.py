"""``SNELLABackbone``: wrap any registered backbone, freeze it and inject SNELLA updates into chosen Linears.

``FrozenBaseBackbone`` holds what every such wrapper shares: the frozen base's fingerprint and delta-only state dicts.
"""
import hashlib
import json
import logging
from typing import Any, Dict, Iterable, Optional

import torch
from mmengine.logging import MMLogger, print_log
from mmengine.model import BaseModule
from mmseg.registry import MODELS

from ..snella import SNELLAConfig, inject_snella
from ..snella.inject import InjectionReport, summarize_names
from ..snella.layer import DELTA_KEY
from .backbones.families import absorb_timm_block_inputs

SAVE_MODES = ('auto', 'delta', 'full')
# State-dict key (under the SNELLABackbone's prefix, e.g. ``backbone.snella_base_fingerprint``) of the frozen
# base's fingerprint in delta-only state dicts: a uint8 tensor holding JSON, zero-padded to a fixed length so that
# resuming with the same base at another path still sees tensors of the checkpoint's shapes.
FINGERPRINT_KEY = 'snella_base_fingerprint'
FINGERPRINT_BYTES = 1024
FINGERPRINT_FILE_CHARS = 150  # even if JSON escapes every character (6 bytes), the record fits FINGERPRINT_BYTES
OVERRIDE_HINT = 'model.backbone.check_base=False'


def _pretrained_source(backbone: torch.nn.Module) -> Optional[str]:
    """Return the file the inner backbone loads in ``init_weights`` (its own ``pretrained`` or its init_cfg's)."""
    if getattr(backbone, 'pretrained', None):
        return str(backbone.pretrained)
    init_cfg = getattr(backbone, 'init_cfg', None)
    cfgs = init_cfg if isinstance(init_cfg, list) else [init_cfg]
    return next((str(c.get('checkpoint')) for c in cfgs if isinstance(c, dict) and c.get('type') == 'Pretrained'),
                None)


def hash_tensors(tensors: Iterable[torch.Tensor]) -> str:
    """Hash tensors by value: sha256 over the sorted sha256 digests of each tensor's dtype, shape and bytes.

    Sorting makes it independent of parameter names and order, so a code change that renames frozen modules keeps
    old checkpoints valid; any changed value changes it.

    Args:
        tensors: The frozen weights.

    Returns:
        The hex digest.
    """
    digests = []
    for tensor in tensors:
        flat = tensor.detach().reshape(-1).contiguous().cpu()
        digest = hashlib.sha256(f'{flat.dtype}{tuple(tensor.shape)}'.encode())
        digest.update(flat.view(torch.uint8).numpy())
        digests.append(digest.digest())
    return hashlib.sha256(b''.join(sorted(digests))).hexdigest()


def encode_fingerprint(fingerprint: Dict[str, Any]) -> torch.Tensor:
    """Return the fingerprint as the fixed-length uint8 tensor stored under ``FINGERPRINT_KEY``."""
    record = dict(fingerprint)
    if record['file'] and len(record['file']) > FINGERPRINT_FILE_CHARS:  # keep the end, which names the file
        record['file'] = '...' + record['file'][-FINGERPRINT_FILE_CHARS:]
    encoded = json.dumps(record).encode()
    return torch.frombuffer(bytearray(encoded.ljust(FINGERPRINT_BYTES, b'\0')), dtype=torch.uint8)


def decode_fingerprint(tensor: torch.Tensor) -> Dict[str, Any]:
    """Return the fingerprint a tensor of ``encode_fingerprint`` holds."""
    return json.loads(bytes(tensor.cpu().tolist()).rstrip(b'\0').decode())


class FrozenBaseBackbone(BaseModule):
    """A frozen inner backbone with trainable updates: delta-only state dicts that carry the base's fingerprint.

    Subclasses build the updates in ``__init__`` and say which of the inner backbone's state-dict keys are updates
    (``is_update_key``); everything else is the frozen base, which state dicts leave out when ``delta_only`` and
    which loads from the inner backbone's pretrained file in ``init_weights`` (or, at test time, when a delta-only
    checkpoint arrives). Updates only make sense on the base they were trained on, so delta-only state dicts carry
    the base's fingerprint (``base_fingerprint``) under ``FINGERPRINT_KEY``, and loading one onto other frozen
    weights is refused unless ``check_base=False``.

    Args:
        backbone: Config of the inner backbone (any registered one, e.g. ``TimmViT``), built here.
        save: What state dicts hold: ``'delta'`` only the updates, ``'full'`` the frozen weights too, ``'auto'``
            updates when the inner backbone has a pretrained file to rebuild from, else everything.
        check_base: Refuse delta-only checkpoints trained on other frozen weights than this model holds;
            ``False`` loads them with a warning.
        init_cfg: mmengine's initialisation config of this wrapper.
    """

    updates_name = 'SNELLA'  # how messages name the updates

    def __init__(self, backbone: Dict[str, Any], save: str = 'auto', check_base: bool = True,
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(init_cfg)
        if save not in SAVE_MODES:
            raise ValueError(f'save must be one of {SAVE_MODES}, got {save!r}')
        self.backbone = MODELS.build(backbone)
        self.delta_only = save == 'delta' or (save == 'auto' and _pretrained_source(self.backbone) is not None)
        self.check_base = check_base
        self._bases_loaded = False
        self._base_fingerprint: Optional[Dict[str, Any]] = None
        self._register_state_dict_hook(self._drop_frozen_weights)
        self._register_load_state_dict_pre_hook(self._check_incoming, with_module=True)
        self.register_load_state_dict_post_hook(self._accept_missing_frozen_weights)
        self._absent_frozen_keys: set = set()

    def is_update_key(self, key: str) -> bool:
        """Whether a state-dict key of the inner backbone (``model.blocks.0...``) names a trained update.

        Args:
            key: A key of ``self.backbone.state_dict()``.

        Returns:
            True for an update tensor, False for a frozen base tensor.
        """
        raise NotImplementedError(f'{type(self).__name__} must say which keys are its updates')

    def init_weights(self) -> None:
        """Load the inner backbone's pretrained weights, then fingerprint them (they are the base from now on)."""
        super().init_weights()
        self._bases_loaded = True
        self._base_fingerprint = None
        if self.delta_only:  # hashed as loaded, before any dtype or device change; every checkpoint needs it
            self.base_fingerprint()

    def forward(self, x: torch.Tensor):
        """Return the inner backbone's features of ``x``."""
        return self.backbone(x)

    def base_fingerprint(self) -> Dict[str, Any]:
        """Return ``{'sha256': ..., 'file': ...}``: a hash of the frozen weights held and the file they came from.

        Computed on first use after the weights load, then kept.
        """
        if self._base_fingerprint is None:
            frozen = [v for k, v in self.backbone.state_dict().items() if not self.is_update_key(k)]
            self._base_fingerprint = dict(sha256=hash_tensors(frozen), file=_pretrained_source(self.backbone))
        return dict(self._base_fingerprint)

    # ------------------------------------------------------------------------------- delta-only checkpoints
    def _drop_frozen_weights(self, module, state_dict, prefix, local_metadata) -> None:
        if not self.delta_only:
            return
        inner = prefix + 'backbone.'
        for key in [k for k in state_dict if k.startswith(inner) and not self.is_update_key(k[len(inner):])]:
            del state_dict[key]
        if self._bases_loaded:  # before that the frozen weights are a random init that no checkpoint can name
            state_dict[prefix + FINGERPRINT_KEY] = encode_fingerprint(self.base_fingerprint())

    def _check_incoming(self, module, state_dict, prefix, local_metadata, strict, missing_keys,
                        unexpected_keys, error_msgs) -> None:
        """Validate incoming update tensors, put the frozen base they need in place, check it is theirs.

        A load-state-dict pre-hook: the base comes from ``_load_base_for_delta_only_checkpoint``, the check from
        ``_check_base``.

        The base load happens here because this is the only point every loader passes through: mmseg's
        ``init_model``, mmengine's ``load_from`` and ``--resume`` and ``load_deltas`` call ``load_state_dict`` on a
        model whose ``init_weights`` never ran, with no hook in between; and it must precede the updates' load,
        since ``init_weights`` re-initialises them.
        """
        recorded = state_dict.pop(prefix + FINGERPRINT_KEY, None)
        inner = prefix + 'backbone.'
        incoming = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(inner)}
        if not incoming:
            return
        self._check_update_tensors(incoming)
        if all(self.is_update_key(k[len('backbone.'):]) for k in incoming):
            self._load_base_for_delta_only_checkpoint()
            self._check_base(recorded)
            self._absent_frozen_keys = {f'{inner}{k}' for k in self.backbone.state_dict()
                                        if not self.is_update_key(k)}
        else:  # frozen weights arrive from the checkpoint: they are the base from now on
            self._bases_loaded = True
            self._base_fingerprint = None

    def _check_update_tensors(self, incoming: Dict[str, torch.Tensor]) -> None:
        """Refuse a state dict whose update tensors (names and shapes) are not exactly this backbone's.

        Raises:
            ValueError: The names or shapes differ.
        """
        own = {f'backbone.{k}': v for k, v in self.backbone.state_dict(keep_vars=True).items()
               if self.is_update_key(k)}
        own_deltas = set(own)
        in_deltas = {k for k in incoming if self.is_update_key(k[len('backbone.'):])}
        shape_errors = [f'{k}: checkpoint {tuple(incoming[k].shape)} vs model {tuple(own[k].shape)}'
                        for k in sorted(in_deltas & own_deltas) if incoming[k].shape != own[k].shape]
        if in_deltas and (in_deltas != own_deltas or shape_errors):
            missing = sorted(own_deltas - in_deltas)
            extra = sorted(in_deltas - own_deltas)
            raise ValueError(
                f'the {self.updates_name} checkpoint does not fit this backbone: '
                f'{len(missing)} update tensors missing (e.g. {missing[:3]}), {len(extra)} unknown '
                f'(e.g. {extra[:3]}), {len(shape_errors)} of another shape (e.g. {shape_errors[:3]}). '
                'It was saved with another backbone, rank or target list: use the config it was trained with.')

    def _load_base_for_delta_only_checkpoint(self) -> None:
        """Load the frozen weights a delta-only checkpoint lacks from the pretrained file, unless already loaded.

        Raises:
            ValueError: The config names no pretrained file to rebuild them from.
        """
        if self._bases_loaded:
            return
        if _pretrained_source(self.backbone) is None:
            raise ValueError(f'this checkpoint holds only {self.updates_name} updates, but the backbone config '
                             'names no pretrained file to rebuild the frozen weights from: set the backbone\'s '
                             'pretrained path (or init_cfg) to the weights it was trained on')
        self.init_weights()

    def _check_base(self, recorded: Optional[torch.Tensor]) -> None:
        """Refuse updates trained on other frozen weights than this model holds (or warn, with check_base=False).

        Raises:
            ValueError: The fingerprints differ and ``check_base`` is True.
        """
        current = self.base_fingerprint()
        if recorded is None:
            print_log(f'this delta-only {self.updates_name} state dict records no base fingerprint (saved before '
                      'snella-seg recorded one, or by a model copy that never loaded its base, such as an EMA model): '
                      f'nothing checks that its updates were trained on {current["file"]!r}', logger='current',
                      level=logging.WARNING)
            return
        trained = decode_fingerprint(recorded)
        if trained['sha256'] == current['sha256']:
            return
        message = (f'the {self.updates_name} updates in this checkpoint were trained on the frozen backbone weights of '
                   f'{trained["file"]!r} (sha256 {trained["sha256"][:12]}), but the configured backbone holds '
                   f'those of {current["file"]!r} (sha256 {current["sha256"][:12]}): on other base weights they give '
                   'wrong predictions without any error. Point model.backbone.backbone.pretrained (or its init_cfg) '
                   f'at the file they were trained on, or set {OVERRIDE_HINT} (e.g. --cfg-options {OVERRIDE_HINT}) '
                   'to load them anyway.')
        if self.check_base:
            raise ValueError(message)
        print_log(f'{message} Loading anyway ({OVERRIDE_HINT}).', logger='current', level=logging.WARNING)

    def _accept_missing_frozen_weights(self, module, incompatible_keys) -> None:
        """A delta-only checkpoint misses the frozen weights by design: they came from the pretrained file."""
        incompatible_keys.missing_keys[:] = [
            k for k in incompatible_keys.missing_keys if k not in self._absent_frozen_keys]
        self._absent_frozen_keys = set()


@MODELS.register_module()
class SNELLABackbone(FrozenBaseBackbone):
    """A frozen backbone with trainable SNELLA updates in the Linear layers that ``snella['targets']`` match.

    ``FrozenBaseBackbone`` documents how the frozen base loads and how delta-only state dicts are checked.

    Args:
        backbone: Config of the inner backbone (any registered one, e.g. ``TimmViT``), built and frozen here.
        snella: SNELLA's options as a dict, e.g. ``dict(targets=[...], rank=32, kernel='snella',
            mask='magnitude', sparsity=0.0, split_qkv=True)``; ``SNELLAConfig`` documents and checks each (unknown
            keys are refused). With ``absorb_activations`` (default) adapted layers of timm ViT/SAM blocks also
            compute the frozen LayerNorm or MLP activation before them, so that tensor is stored once instead of
            twice (same outputs, less memory; ``merge_snella`` undoes it).
        save: What state dicts hold: ``'delta'`` only the updates and their sparsities (a few MB for ViT-L),
            ``'full'`` the frozen weights too, ``'auto'`` deltas when the inner backbone has a pretrained file to
            rebuild from, else everything.
        check_base: Refuse delta-only checkpoints trained on other frozen weights than this model holds;
            ``False`` loads them with a warning.
        init_cfg: mmengine's initialisation config of this wrapper.
    """

    def __init__(self, backbone: Dict[str, Any], snella: Dict[str, Any], save: str = 'auto',
                 check_base: bool = True, init_cfg: Optional[dict] = None) -> None:
        snella_config = SNELLAConfig.from_dict(snella, origin='model.backbone.snella')
        super().__init__(backbone, save, check_base, init_cfg)
        self.snella_config = snella_config
        self.report: InjectionReport = inject_snella(self.backbone, self.snella_config)
        absorbed = absorb_timm_block_inputs(self.backbone) if self.snella_config.absorb_activations else []
        MMLogger.get_current_instance().info(
            str(self.report) + (f'; {len(absorbed)} frozen norms/activations are computed inside the adapted '
                                f'layer after them ({summarize_names(absorbed)})' if absorbed else ''))

    def is_update_key(self, key: str) -> bool:
        """Whether ``key`` names a SNELLA update tensor (under a ``deltas`` module).

        Args:
            key: A key of ``self.backbone.state_dict()``.

        Returns:
            True for an update tensor.
        """
        return DELTA_KEY in key
