"""Read pretrained ViT / SAM weights without unpickling arbitrary objects, and bring them to timm's key names.

These layouts are understood: official Segment Anything checkpoints (``image_encoder.*`` or a bare image encoder),
official DINOv2 checkpoints (torch.hub's ``dinov2_vit*14[_reg4]_pretrain.pth``: ``mask_token``, ``register_tokens``),
official DINOv3 checkpoints (``dinov3_vit*16_pretrain_*.pth``: ``storage_tokens``, ``rope_embed.periods``), the EVA-02
release (``eva02_*_pt_*.pt``: ``mlp.w1/w2/w3``, ``attn.q_bias``), OpenAI/OpenCLIP CLIP state dicts (``visual.*``, e.g.
OpenCLIP's ``open_clip_pytorch_model.bin``; the text tower is left out), official SAM 2 checkpoints (the Hiera
trunk's ``image_encoder.trunk.*``, for ``TimmHiera``), timm checkpoints (including AugReg ViTs saved
by timm), and mmsegmentation ``VisionTransformer`` checkpoints.
The functions here only rename and resize; deciding whether a checkpoint fits a model is the caller's job, with
``compare_with_module`` listing what disagrees.
"""
import math
import os
import re
import zipfile
from dataclasses import dataclass
from typing import Dict, List, Mapping, Tuple

import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed_nhwc
from timm.models import eva, hieradet_sam2, vision_transformer, vision_transformer_sam
from torch import Tensor, nn

from ..utils.checkpoint_loading import load_checkpoint_safely
from ..snella import SNELLALinear
from ..snella.layer import DELTA_KEY

CHECKPOINT_FORMATS = ('auto', 'sam', 'dinov2', 'dinov3', 'eva02', 'clip', 'timm', 'mmseg')
# SAM 2's Hiera trunk (TimmHiera): the official sam2*_hiera_*.pt or timm's HieraDet state dict
HIERA_CHECKPOINT_FORMATS = ('auto', 'sam2', 'timm')
SAM2_TRUNK_PREFIX = 'image_encoder.trunk.'
CONTAINER_KEYS = ('state_dict', 'model', 'module')

# mmseg VisionTransformer -> timm VisionTransformer (the inverse of mmseg's tools/model_converters/vit2mmseg.py).
MMSEG_TO_TIMM = (
    (r'^patch_embed\.projection\.', 'patch_embed.proj.'),
    (r'^ln_pre\.', 'norm_pre.'),
    (r'^ln1\.', 'norm.'),
    (r'^layers\.(\d+)\.ln1\.', r'blocks.\1.norm1.'),
    (r'^layers\.(\d+)\.ln2\.', r'blocks.\1.norm2.'),
    (r'^layers\.(\d+)\.attn\.attn\.in_proj_(weight|bias)$', r'blocks.\1.attn.qkv.\2'),
    (r'^layers\.(\d+)\.attn\.attn\.out_proj\.', r'blocks.\1.attn.proj.'),
    (r'^layers\.(\d+)\.ffn\.layers\.0\.0\.', r'blocks.\1.mlp.fc1.'),
    (r'^layers\.(\d+)\.ffn\.layers\.1\.', r'blocks.\1.mlp.fc2.'),
)


def read_state_dict(path: str) -> Dict[str, Tensor]:
    """Tensors of a local ``.safetensors`` or torch file, unwrapped from ``state_dict``/``model``/``module``.

    Torch files load weights-only (plus the few classes of mmengine's training checkpoints): a file that needs
    arbitrary unpickling is refused with the fix, never executed.
    """
    path = os.path.expanduser(str(path))
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f'pretrained checkpoint {path!r} does not exist. Weights are read from local files only (nothing is '
            'downloaded): put the file there or set the backbone\'s `pretrained` to its path.')
    if _is_torchscript_archive(path):
        raise ValueError(
            f'{path!r} is a TorchScript archive (as OpenAI\'s CLIP release files are), which cannot be read '
            'weights-only. Convert it once to a state dict: python -c "import torch; torch.save(torch.jit.load('
            f'\'{path}\', map_location=\'cpu\').state_dict(), \'clip_state_dict.pth\')" and point pretrained at the '
            'new file, or use OpenCLIP\'s open_clip_pytorch_model.bin of the same model.')
    return _tensors_only(_unwrap_containers(load_checkpoint_safely(path, map_location='cpu')), path)


def _is_torchscript_archive(path: str) -> bool:
    """A torch zip file holding TorchScript code (``<archive>/code/...``) rather than only pickled tensors."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.split('/')[1:2] == ['code'] for name in archive.namelist())


def _unwrap_containers(loaded: object) -> object:
    while isinstance(loaded, Mapping):
        container = next((k for k in CONTAINER_KEYS if isinstance(loaded.get(k), Mapping)), None)
        if container is None:
            break
        loaded = loaded[container]
    return loaded


def _tensors_only(loaded: object, path: str) -> Dict[str, Tensor]:
    tensors = {k: v for k, v in loaded.items() if torch.is_tensor(v)} if isinstance(loaded, Mapping) else {}
    if not tensors:
        found = list(loaded)[:8] if isinstance(loaded, Mapping) else type(loaded).__name__
        raise ValueError(f'{path!r} holds no tensors where a state dict was expected (found {found})')
    if all(k.startswith('module.') for k in tensors):  # saved from a DistributedDataParallel wrapper
        tensors = {k[len('module.'):]: v for k, v in tensors.items()}
    return tensors


def detect_format(state: Mapping[str, Tensor]) -> str:
    """'sam', 'sam2', 'dinov2', 'dinov3', 'eva02', 'clip', 'mmseg' or 'timm', from the key names alone."""
    keys = list(state)
    if any(k.startswith(SAM2_TRUNK_PREFIX) for k in keys):
        return 'sam2'
    if any(k.startswith('image_encoder.') or '.mlp.lin1.' in k for k in keys):
        return 'sam'
    if any(k.endswith('visual.class_embedding') for k in keys):
        return 'clip'
    if 'storage_tokens' in state:
        return 'dinov3'
    if any(k.endswith(('.mlp.w1.weight', '.mlp.w12.weight', '.attn.q_bias')) for k in keys) and 'mask_token' in state:
        return 'eva02'
    if 'mask_token' in state and any(k.startswith('blocks.') for k in keys):  # timm drops the pretraining token
        return 'dinov2'
    if any(re.match(r'(backbone\.)?layers\.\d+\.', k) for k in keys):
        return 'mmseg'
    if any(k.startswith('blocks.') for k in keys):
        return 'timm'
    raise ValueError(f'cannot tell the checkpoint format from its keys (first: {keys[:6]}); expected official SAM '
                     '(image_encoder.*), official DINOv2 (mask_token, blocks.N.*), DINOv3 (storage_tokens), EVA-02 '
                     '(mask_token, blocks.N.mlp.w1), CLIP (visual.class_embedding), timm (blocks.N.*) or mmseg ViT '
                     '(layers.N.*) keys')


def to_timm_keys(state: Mapping[str, Tensor], checkpoint_format: str) -> Dict[str, Tensor]:
    """Rename a checkpoint's keys to timm's ``VisionTransformer`` / ``VisionTransformerSAM`` names."""
    if checkpoint_format == 'auto':
        checkpoint_format = detect_format(state)
    if checkpoint_format == 'sam2':
        raise ValueError("a SAM 2 checkpoint (image_encoder.trunk.* keys) holds a Hiera encoder, which TimmViT does "
                         "not build: use dict(type='TimmHiera', arch='sam2-hiera-l') (or the checkpoint's size)")
    if checkpoint_format == 'sam':
        # timm's SAM filter strips ``image_encoder.`` and renames ``mlp.lin*``; a bare encoder gets the prefix.
        if not any(k.startswith('image_encoder.') for k in state):
            state = {f'image_encoder.{k}': v for k, v in state.items()}
        return vision_transformer_sam.checkpoint_filter_fn(state, model=None)
    if checkpoint_format == 'dinov2':
        # timm's own conversion: drops the pretraining mask token; registers become timm's reg_token and the class
        # token's position is folded into it (timm's DINOv2-with-registers embeds no prefix positions)
        return vision_transformer._convert_dinov2(dict(state), model=None)
    if checkpoint_format == 'clip':
        # timm's own conversion of the OpenAI layout (OpenCLIP saves the same): the visual tower only, its output
        # projection as a head (left out by the backbone, as is ln_post unless final_norm)
        prefix = next(k for k in state if k.endswith('visual.class_embedding'))[:-len('class_embedding')]
        return vision_transformer._convert_openai_clip(state, model=None, prefix=prefix)
    if checkpoint_format == 'dinov3':
        return dinov3_to_timm(state)
    if checkpoint_format == 'eva02':
        return eva02_to_timm(state)
    if checkpoint_format == 'mmseg':
        return mmseg_to_timm(state)
    if checkpoint_format == 'timm':
        return dict(state)
    raise ValueError(f'checkpoint_format must be one of {CHECKPOINT_FORMATS}, got {checkpoint_format!r}')


def mmseg_to_timm(state: Mapping[str, Tensor]) -> Dict[str, Tensor]:
    """mmseg ``VisionTransformer`` keys to timm's; a whole-segmentor checkpoint contributes its ``backbone.*``."""
    if any(k.startswith('backbone.') for k in state):
        state = {k[len('backbone.'):]: v for k, v in state.items() if k.startswith('backbone.')}
    converted = {}
    for key, value in state.items():
        for pattern, replacement in MMSEG_TO_TIMM:
            key = re.sub(pattern, replacement, key)
        converted[key] = value
    return converted


def dinov3_to_timm(state: Mapping[str, Tensor]) -> Dict[str, Tensor]:
    """Official DINOv3 keys to timm's ``Eva`` names, as timm's own filter renames them.

    Left out: the pretraining mask token, RoPE's ``periods`` (timm recomputes them from the same temperature), the
    qkv bias mask, and the 7B's local-crop class norm. The qkv bias splits into timm's q and v biases; its k part
    is the one the mask zeroes, so it never acted.
    """
    converted = {}
    for key, value in state.items():
        if key == 'mask_token' or key.endswith(('.periods', '.bias_mask')) or key.startswith('local_cls_norm.'):
            continue
        if key.endswith('.attn.qkv.bias'):
            q_bias, _, v_bias = value.chunk(3)
            converted[key.replace('qkv.bias', 'q_bias')] = q_bias
            converted[key.replace('qkv.bias', 'v_bias')] = v_bias
            continue
        key = key.replace('storage_tokens', 'reg_token')
        key = key.replace('.ls1.gamma', '.gamma_1').replace('.ls2.gamma', '.gamma_2')
        converted[key] = value
    return converted


# EVA-02 release -> timm Eva (timm's eva.checkpoint_filter_fn renames, without its model-dependent resizing)
EVA02_TO_TIMM = (
    (r'\.mlp\.ffn_ln\.', '.mlp.norm.'),
    (r'\.attn\.inner_attn_ln\.', '.attn.norm.'),
    (r'\.mlp\.w12\.', '.mlp.fc1.'),
    (r'\.mlp\.w1\.', '.mlp.fc1_g.'),
    (r'\.mlp\.w2\.', '.mlp.fc1_x.'),
    (r'\.mlp\.w3\.', '.mlp.fc2.'),
)


def eva02_to_timm(state: Mapping[str, Tensor]) -> Dict[str, Tensor]:
    """EVA-02 release keys (MIM pretraining) to timm's ``Eva`` names.

    Left out: the pretraining mask token and ``lm_head``, and the RoPE tables (``rope.freqs_cos/sin``, also under
    ``blocks.N.attn.rope.`` in fine-tuning code), which timm recomputes for the grid of every input. With q, k and v
    apart, ``attn.q_bias``/``attn.v_bias`` are the q and v projections' biases (k has none).
    """
    separate_qkv = any(k.endswith('.attn.q_proj.weight') for k in state)
    converted = {}
    for key, value in state.items():
        if key == 'mask_token' or key.startswith('lm_head.') or re.search(r'(^|\.)rope\.', key):
            continue
        for pattern, replacement in EVA02_TO_TIMM:
            key = re.sub(pattern, replacement, key)
        if separate_qkv:
            key = re.sub(r'\.attn\.(q|v)_bias$', r'.attn.\1_proj.bias', key)
        converted[key] = value
    return converted


def hiera_to_timm_keys(state: Mapping[str, Tensor],
                       checkpoint_format: str) -> Tuple[Dict[str, Tensor], Dict[str, int], str]:
    """(timm ``HieraDet`` state, tensor counts of the groups left out, format read) of a Hiera checkpoint.

    The official SAM 2 / 2.1 checkpoint (``sam2_hiera_large.pt``: ``{'model': ...}``) holds the whole video model;
    only its image encoder's trunk (``image_encoder.trunk.*``) is the backbone. The FPN neck (``image_encoder.neck``),
    prompt encoder, mask decoder and memory modules are left out by design and counted by their first two name
    parts. Keys are renamed by timm's own filter (SAM 2's ``mlp.layers.0/1`` are timm's ``mlp.fc1/fc2``).
    """
    if checkpoint_format not in HIERA_CHECKPOINT_FORMATS:
        raise ValueError(f'checkpoint_format must be one of {HIERA_CHECKPOINT_FORMATS}, got {checkpoint_format!r}')
    is_sam2 = any(k.startswith(SAM2_TRUNK_PREFIX) for k in state)
    if checkpoint_format == 'auto':
        if not is_sam2 and 'pos_embed_window' not in state:
            raise ValueError(f'cannot tell a Hiera checkpoint format from its keys (first: {list(state)[:6]}); '
                             'expected official SAM 2 (image_encoder.trunk.*) or timm HieraDet (pos_embed_window, '
                             'blocks.N.*) keys; a SAM (v1) ViT checkpoint goes with TimmViT')
        checkpoint_format = 'sam2' if is_sam2 else 'timm'
    prefix = SAM2_TRUNK_PREFIX if checkpoint_format == 'sam2' else ''
    ignored: Dict[str, int] = {}
    for key in state:
        if not key.startswith(prefix):
            group = '.'.join(key.split('.')[:2]) if key.startswith('image_encoder.') else key.split('.')[0]
            ignored[group] = ignored.get(group, 0) + 1
    return hieradet_sam2.checkpoint_filter_fn(dict(state), prefix=prefix), ignored, checkpoint_format


def fit_hiera_to_model(state: Dict[str, Tensor], model: nn.Module) -> Dict[str, Tensor]:
    """Resize a global position table of another size to the model's, bicubically as Hiera resizes it at every
    forward. The window table is tiled, not resized: one of another size stays and is reported as a mismatch."""
    pos = state.get('pos_embed')
    if pos is None or pos.ndim != 4 or pos.shape[-2:] == model.pos_embed.shape[-2:]:
        return state
    resized = F.interpolate(pos.float(), size=model.pos_embed.shape[-2:], mode='bicubic').to(pos.dtype)
    return {**state, 'pos_embed': resized}


@dataclass(frozen=True)
class ArchSummary:
    """The shape-defining hyper-parameters of a ViT/SAM encoder, as far as its weights reveal them."""
    family: str
    embed_dim: int
    depth: int
    mlp_dim: int
    patch_size: int
    grid: Tuple[int, int]

    def __str__(self) -> str:
        return (f'{self.family} family, embed_dim {self.embed_dim}, depth {self.depth}, mlp {self.mlp_dim}, '
                f'patch {self.patch_size}, position grid {self.grid[0]}x{self.grid[1]} '
                f'(img_size {self.grid[0] * self.patch_size})')


def summarize_timm_state(state: Mapping[str, Tensor]) -> ArchSummary:
    """Guess the architecture a timm-keyed state dict was made for (0 where a tensor is absent)."""
    patch = state.get('patch_embed.proj.weight')
    pos = state.get('pos_embed')
    fc1 = state.get('blocks.0.mlp.fc1.weight', state.get('blocks.0.mlp.fc1_g.weight'))
    block_ids = {int(m.group(1)) for k in state if (m := re.match(r'blocks\.(\d+)\.', k))}
    is_sam = (pos is not None and pos.ndim == 4) or any('rel_pos_h' in k for k in state)
    # timm's Eva: LayerScale as gamma_1 (DINOv3), q/k/v apart or SwiGLU (EVA-02)
    is_eva = any(k.endswith(('.gamma_1', '.attn.q_proj.weight', '.mlp.fc1_g.weight')) for k in state)
    if pos is None:
        grid = (0, 0)
    elif pos.ndim == 4:
        grid = (pos.shape[1], pos.shape[2])
    else:  # with or without the class token's position (DINOv2 with registers embeds no prefix positions)
        tokens = pos.shape[1]
        side = math.isqrt(tokens) if math.isqrt(tokens) ** 2 == tokens else math.isqrt(tokens - 1)
        grid = (side, side)
    return ArchSummary(family='sam' if is_sam else 'eva' if is_eva else 'vit',
                       embed_dim=patch.shape[0] if patch is not None else 0,
                       depth=max(block_ids) + 1 if block_ids else 0,
                       mlp_dim=fc1.shape[0] if fc1 is not None else 0,
                       patch_size=patch.shape[-1] if patch is not None else 0,
                       grid=grid)


def fit_vit_to_model(state: Dict[str, Tensor], model: nn.Module) -> Dict[str, Tensor]:
    """Resample a plain ViT's ``pos_embed`` to the model's grid with timm's own checkpoint filter.

    A bias-free patch convolution (mmseg's default) gets a zero bias when the model has one: the same function.
    """
    fitted = vision_transformer.checkpoint_filter_fn(state, model)
    weight = fitted.get('patch_embed.proj.weight')
    if model.patch_embed.proj.bias is not None and weight is not None and 'patch_embed.proj.bias' not in fitted:
        fitted['patch_embed.proj.bias'] = weight.new_zeros(weight.shape[0])
    return fitted


def fit_eva_to_model(state: Dict[str, Tensor], model: nn.Module) -> Dict[str, Tensor]:
    """Resample an Eva's ``pos_embed`` (EVA-02) to the model's grid with timm's own checkpoint filter, and drop
    an all-zero q/v bias where the model has none.

    DINOv3's distilled ViT-S/B/L were released with a qkv bias that is all zeros, and timm builds them without one
    (with one, timm's attention would bypass the qkv Linear that SNELLA adapts). A non-zero bias stays, so the
    comparison with the model reports it and nothing loads.
    """
    fitted = eva.checkpoint_filter_fn(state, model)
    for key in [k for k in fitted if k.endswith(('.attn.q_bias', '.attn.v_bias'))]:
        owner, _, name = key.rpartition('.')
        if getattr(model.get_submodule(owner), name, None) is None and not fitted[key].any():
            del fitted[key]
    return fitted


def fit_sam_to_model(state: Dict[str, Tensor], model: nn.Module) -> Dict[str, Tensor]:
    """Resize SAM's absolute embedding and its global blocks' relative tables to the model's image size.

    timm's SAM filter only renames keys. Windowed blocks keep their window-sized tables; a global block's table
    spans the whole grid (``2 * grid - 1`` rows) and is resized linearly, as SAM itself does at run time.
    """
    pos = state.get('pos_embed')
    if pos is None or pos.ndim != 4 or model.pos_embed is None:
        return state
    fitted = dict(state)
    checkpoint_grid = pos.shape[1:3]
    fitted['pos_embed'] = resample_abs_pos_embed_nhwc(pos, list(model.pos_embed.shape[1:3]))
    for index, block in enumerate(model.blocks):
        if block.window_size or not block.attn.use_rel_pos:
            continue
        for axis, checkpoint_side in zip('hw', checkpoint_grid):
            key = f'blocks.{index}.attn.rel_pos_{axis}'
            target_rows = getattr(block.attn, f'rel_pos_{axis}').shape[0]
            table = fitted.get(key)
            if table is not None and table.shape[0] == 2 * checkpoint_side - 1 != target_rows:
                fitted[key] = resize_rel_pos(table, target_rows)
    return fitted


def resize_rel_pos(table: Tensor, rows: int) -> Tensor:
    """Linear interpolation of a (positions, head_dim) relative-position table to ``rows`` positions."""
    resized = F.interpolate(table.float().T.unsqueeze(0), size=rows, mode='linear')
    return resized.squeeze(0).T.to(table.dtype).contiguous()


@dataclass
class Incompatibility:
    """How a state dict disagrees with a module: keys named as in the checkpoint."""
    missing: List[str]
    unexpected: List[str]
    shape_mismatches: List[str]

    def __bool__(self) -> bool:
        return bool(self.missing or self.unexpected or self.shape_mismatches)

    def describe(self, show: int = 5) -> str:
        parts = []
        for title, items in (('missing from the checkpoint', self.missing),
                             ('unexpected in the checkpoint', self.unexpected),
                             ('shape mismatches', self.shape_mismatches)):
            if items:
                more = f', ... {len(items) - show} more' if len(items) > show else ''
                parts.append(f'  {title} ({len(items)}): {", ".join(items[:show])}{more}')
        return '\n'.join(parts)


def plain_linear_names(module: nn.Module) -> Dict[str, str]:
    """The module's state-dict keys under the names a plain checkpoint uses; SNELLA update tensors are left out.

    A ``SNELLALinear`` stores its frozen Linear as ``X.base.weight``, which a checkpoint calls ``X.weight``.
    """
    wrapped = {name for name, child in module.named_modules() if isinstance(child, SNELLALinear)}
    names = {}
    for key in module.state_dict(keep_vars=True):
        if DELTA_KEY in key:
            continue
        owner, _, leaf = key.rpartition('.')
        if owner.endswith('.base') and owner[:-len('.base')] in wrapped:
            names[f'{owner[:-len(".base")]}.{leaf}'] = key
        else:
            names[key] = key
    return names


def compare_with_module(module: nn.Module, state: Mapping[str, Tensor]) -> Incompatibility:
    """Missing, unexpected and wrongly shaped keys of ``state`` for ``module``, SNELLA updates excepted."""
    own = module.state_dict(keep_vars=True)
    names = plain_linear_names(module)
    shapes = [f'{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[names[k]].shape)}'
              for k in names if k in state and state[k].shape != own[names[k]].shape]
    return Incompatibility(missing=[k for k in names if k not in state],
                           unexpected=[k for k in state if k not in names],
                           shape_mismatches=shapes)
