"""``TimmViT``: timm's ViT and Segment Anything encoders as an mmseg backbone with multi-level NCHW outputs.

The timm module is kept whole under ``self.model``, so its Linear layers keep timm's names
(``model.blocks.N.attn.qkv``, ``.attn.proj``, ``.mlp.fc1``, ``.mlp.fc2``) for SNELLA's target patterns.
"""
import inspect
import re
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import timm
import torch
from mmengine.logging import print_log
from mmseg.registry import MODELS
from torch import Tensor

from ..checkpoints import compare_with_module, read_state_dict
from .families import (ArchSummary, ModelType, checkpoint_formats, layout_for, model_types, named_archs,
                       summarize_timm_state)
from .pretrained_file import PretrainedFileBackbone
from .sam_attention import BiasRecomputingAttention, WindowedQkvBlock

# Parameter prefix of mmseg's TIMMBackbone(features_only=True): its timm feature wrapper holds the model as .model.
TIMM_BACKBONE_PREFIX = 'timm_model.model.'


def timm_model_args(arch: Union[str, Dict[str, Any]], img_size: int,
                    drop_path_rate: float) -> Tuple[str, str, Dict[str, Any]]:
    """Resolve an arch to its model type, timm model name and ``timm.create_model`` keyword arguments.

    The arch is a registered name or a dict ``family=...`` (a model type: 'vit', 'sam', 'eva') plus timm
    constructor kwargs (and optionally ``timm_name``, the timm model they modify).

    A dict arch without ``timm_name`` is built as its model type's base timm model with every argument that model's
    registration sets given explicitly (the constructor's default unless the dict sets it), so the same arguments
    rebuild it anywhere. With ``timm_name`` it is that timm model with the dict's arguments on top of its own.
    The ViT and Eva types' arguments are plain data, so a config can carry them (see ``mmseg_timm_backbone``);
    SAM's carry a LayerNorm class. Every type pads images bottom/right to whole patches (``dynamic_img_pad``), so
    any image size runs, and ``img_size`` is rounded up to whole patches: the grid a padded image of that size gives
    (518 for 512 at patch 14), so a training crop of ``img_size`` runs without resampling the position embedding at
    every step.

    Args:
        arch: A registered arch name of ``TimmViT`` or a dict as above.
        img_size: The square input side the position tables are built for.
        drop_path_rate: Stochastic-depth rate of the last block.

    Returns:
        The model type's name, the timm model name and its keyword arguments.

    Raises:
        ValueError: For an unknown arch name or model type, or a dict that needs ``timm_name``.
    """
    types = model_types('TimmViT')
    if isinstance(arch, str):
        archs = named_archs('TimmViT')
        if arch not in archs:
            raise ValueError(f'unknown arch {arch!r}; choose one of {list(archs)} or pass a dict of timm kwargs')
        family, timm_name, _, patch_size = archs[arch][:4]
        base: Dict[str, Any] = {}
        extra: Dict[str, Any] = {}
    else:
        extra = dict(arch)
        family = extra.pop('family', None)
        if family not in types:
            raise ValueError(f'a dict arch needs family in {tuple(types)}, got {family!r}')
        timm_name = extra.pop('timm_name', None)
        base_model = types[family].base_model
        if timm_name is None and base_model is None:
            example = [spec.timm_name for spec in named_archs('TimmViT').values() if spec.model_type == family]
            raise ValueError(f'a dict arch of family {family!r} needs timm_name, the timm model it modifies'
                             + (f' (e.g. {example[-1]!r})' if example else ''))
        if timm_name is None:
            timm_name = base_model.timm_name
            defaults = inspect.signature(base_model.model_class.__init__).parameters
            base = {**{k: defaults[k].default for k in base_model.stated_args}, **base_model.overrides}
        else:
            base = {}
        patch_size = extra.get('patch_size', base.get('patch_size')) or _named_patch_size(timm_name)
    whole_patches = -(-img_size // patch_size) * patch_size
    common = dict(base, img_size=whole_patches, num_classes=0, drop_path_rate=drop_path_rate)
    return family, timm_name, {**common, **types[family].build_args, **extra}


def _named_patch_size(timm_name: str) -> int:
    """Return the patch size timm's model name states (``..._patch14_...``).

    Raises:
        ValueError: If the name states none.
    """
    found = re.search(r'patch(\d+)', timm_name)
    if not found:
        raise ValueError(f'timm model {timm_name!r} names no patch size: give patch_size in the dict arch')
    return int(found.group(1))


def _image_cover_weights(cells: int, image_extent: int, patch: int, like: Tensor) -> Tensor:
    """Return (cells, cells) linear-interpolation weights from the padded image's tokens to cells covering the image.

    The ``cells`` tokens lie ``patch`` px apart; the ``cells`` cells evenly cover the image's first ``image_extent``
    px, each sampled at its centre.
    """
    rows = torch.arange(cells, device=like.device)
    centres = ((rows + 0.5) * (image_extent / (cells * patch)) - 0.5).clamp(0, cells - 1)  # in token units
    low = centres.floor().long()
    high = (low + 1).clamp(max=cells - 1)
    upper_share = (centres - low).to(like.dtype)
    weights = like.new_zeros(cells, cells)
    weights.index_put_((rows, low), 1 - upper_share, accumulate=True)
    weights.index_put_((rows, high), upper_share, accumulate=True)
    return weights


def resample_to_image(features: Tensor, image_size: Sequence[int], patch_size: Sequence[int]) -> Tensor:
    """Resample maps of an image padded bottom/right to whole patches so that the same grid covers the image alone.

    Token i of the padded grid sits at pixel ``(i + 0.5) * patch``, but mmseg resizes a map onto the image as if its
    n cells spread evenly over the image's extent: without this, a map of an image ``pad`` px short of whole patches
    would reach the decode head stretched and predictions would drift by up to ``pad`` px towards the far edge.
    Sides that needed no padding are returned untouched (bit for bit); the interpolation runs in the maps' dtype.

    Args:
        features: (B, C, rows, columns) maps of the padded image.
        image_size: (height, width) of the image before padding.
        patch_size: (height, width) of a patch (a map cell) in pixels.

    Returns:
        Maps of the same shape covering the image alone.
    """
    (height, width), (patch_h, patch_w) = image_size, patch_size
    if not (height % patch_h or width % patch_w):
        return features
    with torch.autocast(device_type=features.device.type, enabled=False):
        if height % patch_h:
            features = _image_cover_weights(features.shape[-2], height, patch_h, features) @ features
        if width % patch_w:
            features = features @ _image_cover_weights(features.shape[-1], width, patch_w, features).T
    return features


@MODELS.register_module()
class TimmViT(PretrainedFileBackbone):
    """A timm ViT, Eva or SAM image encoder returning the outputs of the blocks in ``out_indices`` as maps.

    Archs: plain ViTs ('vit-b', 'vit-l', DINOv2 'dinov2-l' and 'dinov2-reg4-l', CLIP 'clip-l'), Evas (DINOv3
    'dinov3-l', EVA-02 'eva02-l') and SAM image encoders ('sam-b', 'sam-l', 'sam-h'). Maps are (B, C, ceil(H/16),
    ceil(W/16)) (ceil(H/p) for patch size p: patch 14 gives 37x37 maps of a 512x512 crop).

    Any image size runs: timm pads the image bottom/right with zeros to whole patches, and when it did, every map is
    resampled to cover the image alone (``resample_to_image``), so predictions do not shift; images of whole
    patches give exactly timm's features.

    SAM features are taken before SAM's neck, ViT features without the class and register tokens; the head, the
    neck and the blocks after the last out index are removed. ``pretrained`` (a local file in a layout of a
    registered family, see ``families/``) loads in ``init_weights``, so SNELLA may already have wrapped the
    Linears. ``final_norm`` applies the ViT's final LayerNorm to the last block's output, as mmseg's
    ``VisionTransformer(final_norm=True)`` does.
    ``frozen`` freezes the whole encoder (the head-only baseline). ``efficient_sam_blocks`` makes SAM's
    attention recompute its relative-position bias in backward instead of storing it, and its windowed blocks
    run qkv and proj on the image's tokens, not on window padding (see ``sam_attention``): same results.

    Each family (archs, checkpoint layouts, fitting, absorption rule) is one module of ``families/``, registered
    in ``BACKBONE_FAMILIES``; this class reads that table. SAM-specific pieces, all applied to timm's
    ``VisionTransformerSAM``:

    * ``sam_attention.BiasRecomputingAttention`` and ``sam_attention.WindowedQkvBlock``: the memory-saving attention
      and windowed block, swapped in on the built model here in ``__init__`` (``efficient_sam_blocks``; the
      comment there says why by a class swap);
    * ``families/sam.py``: official SAM key layout, ``fit_sam_to_model`` (absolute and relative position tables
      resized to ``img_size``), which frozen norm or activation an adapted qkv/fc1/fc2 computes inside a block
      (timm's windowed block pads before qkv, ``WindowedQkvBlock`` after it), and why a merged SAM stays a
      ``TimmViT`` (LayerNorm eps).

    Args:
        arch: A registered arch name ('vit-b', 'vit-l', 'sam-b', 'sam-l', 'sam-h', 'dinov2-l', 'dinov2-reg4-l',
            'clip-l', 'dinov3-l', 'eva02-l', or a test's own), or a dict with ``family`` (a model type: 'vit',
            'sam' or 'eva') plus timm
            constructor kwargs (``embed_dim``, ``depth``, ``num_heads``, ...) for a variant such as the tests' and
            demo's tiny ViT; with ``timm_name`` the kwargs modify that timm model (e.g. a tiny
            ``vit_large_patch14_dinov2``; required for 'eva'). Default 'vit-b'.
        img_size: Side in pixels of the square input that the position embeddings (and SAM's relative-position
            tables) are built for, rounded up to whole patches (518 at patch 14); checkpoint embeddings are resized
            to it once, at load. Other input sizes still
            run (timm interpolates at forward), but matching the training crop avoids that work. Default 512,
            the shipped configs' crop.
        out_indices: Increasing 0-based indices of the blocks whose outputs are returned, one map per index; the
            blocks after the last one are removed. None (default) takes the arch's usual four for a named arch
            (e.g. (7, 11, 15, 23) for 'vit-l') and the last block for a dict arch.
        drop_path_rate: Stochastic-depth probability of the last block, rising linearly from 0 at the first
            (timm's rule); a regulariser for training. Default 0.0; the shipped configs use 0.1.
        final_norm: Apply the ViT's final LayerNorm to the last returned map, as mmseg's
            ``VisionTransformer(final_norm=True)``. Needs ``out_indices`` to end at the last block; refused for
            SAM, which has no final norm. Default False.
        with_cp: timm's gradient checkpointing of whole blocks: block activations are recomputed in backward
            instead of stored (less memory, about one more forward of time). Default False.
        pretrained: Path of a local checkpoint (``.pth`` or ``.safetensors``; see ``families/``), loaded in
            ``init_weights`` (so after SNELLA wrapped the Linears), never from a hub. A checkpoint of another
            architecture is refused with every disagreement named. Exclusive with ``init_cfg``. Default None
            (timm's random init).
        checkpoint_format: Key layout of ``pretrained``: 'sam' (official Segment Anything), 'dinov2' (the
            official torch.hub ``dinov2_vitl14[_reg4]_pretrain.pth``), 'dinov3' (official ``dinov3_vit*.pth``),
            'eva02' (the EVA-02 release), 'clip' (OpenAI/OpenCLIP ``visual.*`` state dicts), 'timm', 'mmseg'
            (mmseg ``VisionTransformer``), another registered layout, or 'auto' (default; told from the key
            names).
        frozen: Freeze the whole encoder (``requires_grad=False``): the head-only baseline, without encoder
            gradients or optimizer state. Default False (``SNELLABackbone`` freezes it by itself).
        efficient_sam_blocks: For SAM, recompute the relative-position bias in backward instead of storing it,
            and run windowed blocks' qkv/proj on the image's tokens rather than window padding: same outputs and
            gradients, 2.2-2.5 GB less at SAM-L batch 2. No effect on plain ViTs. Default True.
        init_cfg: mmengine initialisation config, e.g. ``dict(type='Pretrained', checkpoint=PATH)``, used when
            ``pretrained`` is None. Default None.

    Raises:
        ValueError: If the arch, the checkpoint format or ``out_indices`` is unknown or out of range, ``final_norm``
            does not apply, or both ``pretrained`` and ``init_cfg`` are set.
    """

    def __init__(self, arch: Union[str, Dict[str, Any]] = 'vit-b', img_size: int = 512,
                 out_indices: Optional[Sequence[int]] = None, drop_path_rate: float = 0.0,
                 final_norm: bool = False, with_cp: bool = False, pretrained: Optional[str] = None,
                 checkpoint_format: str = 'auto', frozen: bool = False, efficient_sam_blocks: bool = True,
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(init_cfg)
        if checkpoint_format not in checkpoint_formats('TimmViT'):
            raise ValueError(f'checkpoint_format must be one of {checkpoint_formats("TimmViT")}, '
                             f'got {checkpoint_format!r}')
        if pretrained and init_cfg:
            raise ValueError('set either pretrained (a local checkpoint file) or init_cfg, not both')
        self.arch_name = arch if isinstance(arch, str) else 'custom'
        self.family, self.timm_name, self.timm_kwargs = timm_model_args(arch, img_size, drop_path_rate)
        self.model_type: ModelType = model_types('TimmViT')[self.family]
        model = timm.create_model(self.timm_name, pretrained=False, **self.timm_kwargs)
        self.depth = len(model.blocks)
        if out_indices is None:
            out_indices = named_archs('TimmViT')[arch].out_indices if isinstance(arch, str) else (self.depth - 1,)
        self.out_indices = tuple(int(i) for i in out_indices)
        self._check_out_indices(final_norm)
        self.final_norm = final_norm
        # Only what forward uses stays: unused parameters would break DDP and confuse the optimizer.
        model.prune_intermediate_layers(list(self.out_indices), prune_norm=not final_norm, prune_head=True)
        model.set_grad_checkpointing(with_cp)
        if efficient_sam_blocks:
            # A class swap on the built timm modules, because no constructor argument reaches them: timm's SAM
            # Block builds its ``Attention`` itself (no attention-layer argument), and ``block_fn`` is one class
            # for windowed and global blocks alike. The swap keeps every parameter and state-dict key, so timm's
            # checkpoint layout and ``families/sam.py`` stay as they are; ``convert`` refuses any variant it does
            # not reproduce exactly (RoPE, attention dropout, no relative positions).
            for block in model.blocks:
                if BiasRecomputingAttention.convert(block.attn):
                    WindowedQkvBlock.convert(block)
        self.model = model
        if frozen:  # the head-only baseline: no gradients, so no optimizer state, for the encoder
            self.model.requires_grad_(False)
        self.pretrained = pretrained
        self.checkpoint_format = checkpoint_format
        mlp = model.blocks[0].mlp
        self.built = ArchSummary(
            family=self.family, embed_dim=model.embed_dim, depth=self.depth,
            mlp_dim=(mlp.fc1_g if hasattr(mlp, 'fc1_g') else mlp.fc1).out_features,  # SwiGLU: the gate's width
            patch_size=model.patch_embed.patch_size[0], grid=tuple(model.patch_embed.grid_size))

    def _check_out_indices(self, final_norm: bool) -> None:
        indices = self.out_indices
        if not indices or list(indices) != sorted(set(indices)) or indices[0] < 0 or indices[-1] >= self.depth:
            raise ValueError(f'out_indices must be increasing block indices in [0, {self.depth}), got {indices}')
        if final_norm and not self.model_type.final_norm:
            raise ValueError(f'final_norm is for encoders with a final norm; {self.family} encoders have no final '
                             'LayerNorm')
        if final_norm and indices[-1] != self.depth - 1:
            raise ValueError(f'final_norm normalizes the last block ({self.depth - 1}), which out_indices {indices} '
                             'does not return')

    def forward(self, x: Tensor) -> Tuple[Tensor, ...]:
        """Maps of the blocks in ``out_indices``.

        Args:
            x: (B, 3, H, W) images of any size.

        Returns:
            One (B, C, ceil(H/p), ceil(W/p)) map per out index, covering the image alone.
        """
        features: List[Tensor] = self.model.forward_intermediates(
            x, indices=list(self.out_indices), intermediates_only=True)
        if self.final_norm:
            features[-1] = self.model.norm(features[-1].permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        patch_size = self.model.patch_embed.patch_size
        return tuple(resample_to_image(f, x.shape[-2:], patch_size) for f in features)

    def mmseg_timm_backbone(self) -> Dict[str, Any]:
        """Return the config of mmseg's own ``TIMMBackbone`` that builds this encoder: deployment without snella_seg.

        Every parameter is under ``timm_model.model.`` (``TIMM_BACKBONE_PREFIX``) instead of ``model.``.

        Like this encoder it pads images to whole patches (``dynamic_img_pad``), but it returns the padded grid's
        maps without ``resample_to_image``: the data preprocessor's ``test_cfg=dict(size_divisor=...)`` (set in the
        shipped configs) pads and crops exactly before it sees an image.

        Returns:
            The ``TIMMBackbone`` config, plain data.

        Raises:
            ValueError: For what TIMMBackbone cannot build: a model type with a ``timm_backbone_refusal`` (SAM's
                LayerNorm(eps=1e-6): timm.create_model drops ``norm_layer=None`` and no mmseg registry name gives
                that eps; Eva's rotary embeddings) and ``final_norm``.
        """
        if self.model_type.timm_backbone_refusal:
            raise ValueError(self.model_type.timm_backbone_refusal)
        if self.final_norm:
            raise ValueError('final_norm normalizes only the last output, which TIMMBackbone cannot express '
                             '(its norm applies to every output)')
        return dict(type='TIMMBackbone', model_name=self.timm_name, features_only=True, pretrained=False,
                    out_indices=self.out_indices, **self.timm_kwargs)

    def load_pretrained(self, path: str) -> None:
        """Load a checkpoint of a registered layout into the encoder, or raise naming every disagreement.

        Args:
            path: A local checkpoint file.

        Raises:
            ValueError: If its layout cannot be told, belongs to another backbone, or the weights do not fit.
        """
        raw = read_state_dict(path)
        layout = layout_for(raw, self.checkpoint_format)
        checkpoint_format = layout.name
        state = layout.to_timm_keys(raw)
        found = summarize_timm_state(state)
        if found.depth == 0:
            raise ValueError(f'{path!r} read as {checkpoint_format!r} format has no transformer blocks '
                             f'(first keys: {list(raw)[:6]}); check checkpoint_format')
        if found.family != self.family or found.patch_size != self.built.patch_size:
            raise ValueError(self._mismatch_message(path, checkpoint_format, found, ''))
        state = self._drop_removed_parts(state)
        state = self.model_type.fit(state, self.model)
        problems = compare_with_module(self.model, state)
        if problems:
            raise ValueError(self._mismatch_message(path, checkpoint_format, found, problems.describe()))
        self.model.load_state_dict(state, strict=False)
        print_log(f'TimmViT {self.arch_name}: loaded {len(state)} tensors from {path} ({checkpoint_format} format, '
                  f'checkpoint position grid {found.grid[0]}x{found.grid[1]}, '
                  f'model {self.built.grid[0]}x{self.built.grid[1]})', logger='current')

    def _drop_removed_parts(self, state: Dict[str, Tensor]) -> Dict[str, Tensor]:
        """Return the checkpoint without its head, neck/final norm and the blocks this backbone removed."""
        removed = ['head.', 'fc_norm.', 'neck.'] + ([] if self.final_norm else ['norm.'])
        removed += [f'blocks.{i}.' for i in range(len(self.model.blocks), self.depth)]
        return {k: v for k, v in state.items() if not any(k.startswith(p) for p in removed)}

    def _mismatch_message(self, path: str, checkpoint_format: str, found: ArchSummary, details: str) -> str:
        def named(summary: ArchSummary) -> str:
            archs = summary.like()
            return f'{summary}' + (f', like {" or ".join(map(repr, archs))}' if archs else '')
        return (f'pretrained checkpoint {path!r} does not fit the built backbone (arch {self.arch_name!r}):\n'
                f'  built:      {named(self.built)}\n'
                f'  checkpoint: {named(found)} (read as {checkpoint_format!r} format)\n'
                + (f'{details}\n' if details else '')
                + 'Choose the arch (and dict kwargs) the checkpoint was made for, or a checkpoint for this arch. '
                  'Nothing was loaded.')

    def extra_repr(self) -> str:
        """Return the arch, outputs and checkpoint for the module's printout."""
        return f'arch={self.arch_name!r}, out_indices={self.out_indices}, pretrained={self.pretrained!r}'
