"""``TimmHiera``: SAM 2's hierarchical Hiera image encoder (timm's ``HieraDet``) as an mmseg backbone.

Unlike the plain ViTs of ``TimmViT``, Hiera returns one map per stage at strides 4, 8, 16 and 32, so its outputs feed
the decode head directly (no ``MultiLevelNeck``). The timm module is kept whole under ``self.model``, so its Linear
layers keep timm's names (``model.blocks.N.attn.qkv``, ``.attn.proj``, ``.mlp.fc1``, ``.mlp.fc2`` and, in the
first block of a stage, the skip projection ``model.blocks.N.proj``) for SNELLA's target patterns.
"""
import math
import re
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import timm
import torch.nn.functional as F
from mmengine.logging import print_log
from mmseg.registry import MODELS
from torch import Tensor

from ..checkpoints import compare_with_module, read_state_dict
from .families import ArchSpec, checkpoint_formats, model_types, named_archs
from .families.sam2_hiera import hiera_to_timm_keys
from .pretrained_file import PretrainedFileBackbone
from .vit import resample_to_image


@MODELS.register_module()
class TimmHiera(PretrainedFileBackbone):
    """SAM 2's Hiera encoder, returning the last block of each stage in ``out_indices`` as a map.

    The maps are (B, C, ceil(H/s), ceil(W/s)) for the stage's stride s (4, 8, 16, 32): Hiera-L gives 144, 288, 576
    and 1152 channels.

    Any image size runs. Hiera itself needs whole windows and poolings: its patch grid tiles an 8x8 window position
    embedding and is halved three times, so images are padded bottom/right with zeros to a multiple of
    ``size_divisor`` (32 for every SAM 2 trunk); each map is then cropped to the cells the image starts and, when
    the image was padded, resampled to cover the image alone (``resample_to_image``, as ``TimmViT`` does), so
    predictions do not shift. Images of a multiple of 32 give exactly timm's features.

    Position embeddings need no resizing at load: Hiera interpolates its global table (7x7 in SAM 2-L) to the patch
    grid of every input and adds the tiled window table, as SAM 2 does; a checkpoint table of another size is
    resized to the built one (``families/sam2_hiera.py``: its layouts, fitting and absorption rule).

    Args:
        arch: A registered arch name ('sam2-hiera-t', 'sam2-hiera-s', 'sam2-hiera-b-plus', 'sam2-hiera-l'), or a
            dict with ``timm_name`` (e.g. 'sam2_hiera_large') plus timm ``HieraDet`` kwargs (``embed_dim``,
            ``num_heads``, ``stages``, ``global_att_blocks``, ``window_spec``, ...) for a variant such as the tests'
            tiny Hiera. Default 'sam2-hiera-l'.
        out_indices: Increasing stage indices in [0, 4) whose last block's output is returned; the blocks after the
            last one are removed. Default (0, 1, 2, 3), strides 4 to 32.
        drop_path_rate: Stochastic-depth probability of the last block, rising linearly from 0 (timm's rule).
        with_cp: timm's gradient checkpointing of whole blocks (less memory, about one more forward of time).
        pretrained: Path of a local checkpoint, loaded in ``init_weights`` (after SNELLA wrapped the Linears): the
            official ``sam2_hiera_large.pt`` / ``sam2.1_hiera_large.pt`` (only ``image_encoder.trunk.*`` is read;
            the neck, the mask decoder and the memory modules are left out by design and logged) or timm's state
            dict. Anything missing, unexpected or of another shape is refused with every key named.
        checkpoint_format: 'sam2', 'timm', another registered layout, or 'auto' (default; told from the key
            names).
        frozen: Freeze the whole encoder: the head-only baseline. Default False.
        init_cfg: mmengine initialisation config, used when ``pretrained`` is None.

    Raises:
        ValueError: If the arch, the checkpoint format or ``out_indices`` is unknown or out of range, or both
            ``pretrained`` and ``init_cfg`` are set.
    """

    def __init__(self, arch: Union[str, Dict[str, Any]] = 'sam2-hiera-l', out_indices: Sequence[int] = (0, 1, 2, 3),
                 drop_path_rate: float = 0.0, with_cp: bool = False, pretrained: Optional[str] = None,
                 checkpoint_format: str = 'auto', frozen: bool = False, init_cfg: Optional[dict] = None) -> None:
        super().__init__(init_cfg)
        if checkpoint_format not in checkpoint_formats('TimmHiera'):
            raise ValueError(f'checkpoint_format must be one of {checkpoint_formats("TimmHiera")}, '
                             f'got {checkpoint_format!r}')
        if pretrained and init_cfg:
            raise ValueError('set either pretrained (a local checkpoint file) or init_cfg, not both')
        self.arch_name = arch if isinstance(arch, str) else 'custom'
        spec, self.timm_kwargs = self._timm_model_args(arch, drop_path_rate)
        self.timm_name = spec.timm_name
        self.model_type = model_types('TimmHiera')[spec.model_type]
        model = timm.create_model(self.timm_name, pretrained=False, **self.timm_kwargs)
        stages = len(model.stage_ends)
        self.out_indices = tuple(int(i) for i in out_indices)
        if not self.out_indices or list(self.out_indices) != sorted(set(self.out_indices)) \
                or self.out_indices[0] < 0 or self.out_indices[-1] >= stages:
            raise ValueError(f'out_indices must be increasing stage indices in [0, {stages}), got {out_indices}')
        self.channels = tuple(model.feature_info[i]['num_chs'] for i in self.out_indices)
        self.strides = tuple(model.feature_info[i]['reduction'] for i in self.out_indices)
        self.size_divisor = self._size_divisor(model)
        # Only what forward uses stays (the classifier's norm, blocks after the last stage taken): unused parameters
        # would break DDP and confuse the optimizer.
        model.prune_intermediate_layers(list(self.out_indices), prune_head=True, coarse=True)
        model.set_grad_checkpointing(with_cp)
        self.model = model
        if frozen:
            self.model.requires_grad_(False)
        self.pretrained = pretrained
        self.checkpoint_format = checkpoint_format

    @staticmethod
    def _timm_model_args(arch: Union[str, Dict[str, Any]], drop_path_rate: float) -> Tuple[ArchSpec, Dict[str, Any]]:
        """Return the registered arch a name or a dict's ``timm_name`` picks, and the ``timm.create_model`` kwargs.

        Raises:
            ValueError: If the name (or the dict's ``timm_name``) is not a registered Hiera arch.
        """
        archs = named_archs('TimmHiera')
        if isinstance(arch, str):
            if arch not in archs:
                raise ValueError(f'unknown arch {arch!r}; choose one of {list(archs)} or pass a dict with '
                                 'timm_name plus timm HieraDet kwargs')
            return archs[arch], dict(num_classes=0, drop_path_rate=drop_path_rate)
        extra = dict(arch)
        timm_name = extra.pop('timm_name', None)
        by_timm_name = {spec.timm_name: spec for spec in archs.values()}
        if timm_name not in by_timm_name:
            raise ValueError(f'a dict arch needs timm_name, one of {list(by_timm_name)}, got {timm_name!r}')
        return by_timm_name[timm_name], dict(num_classes=0, drop_path_rate=drop_path_rate, **extra)

    @staticmethod
    def _size_divisor(model) -> int:
        """Return the image multiple Hiera runs without error or lost cells.

        The patch grid tiles the window position embedding (``window_spec[0]``) and is halved by every q-pooling
        stage (max-pooling drops an odd last cell).
        """
        patch_stride = model.patch_embed.proj.stride[0]
        pooling = model.q_stride[0] ** len(model.q_pool_blocks)
        return patch_stride * math.lcm(model.window_spec[0], pooling)

    def forward(self, x: Tensor) -> Tuple[Tensor, ...]:
        """Maps of the last block of each stage in ``out_indices``.

        Args:
            x: (B, 3, H, W) images of any size.

        Returns:
            One (B, C, ceil(H/s), ceil(W/s)) map per stage of stride s, covering the image alone.
        """
        height, width = x.shape[-2:]
        pad_h, pad_w = -height % self.size_divisor, -width % self.size_divisor
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        features: List[Tensor] = self.model.forward_intermediates(
            x, indices=list(self.out_indices), intermediates_only=True)
        return tuple(resample_to_image(f[..., :-(-height // s), :-(-width // s)], (height, width), (s, s))
                     for f, s in zip(features, self.strides))

    def load_pretrained(self, path: str) -> None:
        """Load a checkpoint of a registered Hiera layout (official SAM 2, timm), or raise naming every disagreement.

        Args:
            path: A local checkpoint file.

        Raises:
            ValueError: If its layout cannot be told or the trunk's weights do not fit.
        """
        raw = read_state_dict(path)
        state, ignored, checkpoint_format = hiera_to_timm_keys(raw, self.checkpoint_format)
        state = {k: v for k, v in state.items() if self._kept(k)}
        state = self.model_type.fit(state, self.model)
        problems = compare_with_module(self.model, state)
        if problems:
            raise ValueError(
                f'pretrained checkpoint {path!r} (read as {checkpoint_format!r} format) does not fit the built '
                f'backbone (arch {self.arch_name!r}, timm {self.timm_name!r}):\n{problems.describe()}\n'
                'Choose the arch (and dict kwargs) the checkpoint was made for, or a checkpoint for this arch. '
                'Nothing was loaded.')
        self.model.load_state_dict(state, strict=False)
        print_log(f'TimmHiera {self.arch_name}: loaded {len(state)} tensors from {path} ({checkpoint_format} format)'
                  + (f'; left out {sum(ignored.values())} tensors outside the image encoder trunk: '
                     + ', '.join(f'{group} ({count})' for group, count in sorted(ignored.items())) if ignored else ''),
                  logger='current')

    def _kept(self, key: str) -> bool:
        """Return whether a timm key belongs to what this backbone kept: not the classifier, not a pruned block."""
        block = re.match(r'blocks\.(\d+)\.', key)
        return not key.startswith('head.') and (block is None or int(block.group(1)) < len(self.model.blocks))

    def extra_repr(self) -> str:
        """Return the arch, outputs and checkpoint for the module's printout."""
        return f'arch={self.arch_name!r}, out_indices={self.out_indices}, pretrained={self.pretrained!r}'
