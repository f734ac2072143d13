"""The table of backbone families: what ``TimmViT`` and ``TimmHiera`` know about each publisher's encoders.

A family (ViT/AugReg, SAM, DINOv2, ...) is one ``BackboneFamily`` entry: its named archs, the key layouts of its
official checkpoints (how each is recognised and renamed to timm's names) and the ``ModelType`` it is built as, which
says how weights are fitted to a built timm model and which frozen norms an adapted Linear may compute inside its
blocks. Adding a family is one ``register_family(BackboneFamily(...))``; format detection, conversion, arch lookup,
the mismatch message's naming and absorption all read ``BACKBONE_FAMILIES``.
"""
import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, NamedTuple, Optional, Tuple

from torch import Tensor, nn

StateDict = Dict[str, Tensor]
# A rule for one timm block type: absorbs what it may and returns the absorbed modules' names inside the block.
AbsorptionRule = Callable[[nn.Module], List[str]]


class ArchSpec(NamedTuple):
    """A named architecture: its model type, timm's model, the usual four out_indices, its shape.

    ``embed_dim``, ``depth`` and ``patch_size`` name the arch a checkpoint of that shape was made for.
    """
    model_type: str
    timm_name: str
    out_indices: Tuple[int, ...]
    patch_size: int
    embed_dim: int
    depth: int


class BaseModel(NamedTuple):
    """The timm model a dict arch without ``timm_name`` modifies, and the constructor arguments it states."""
    timm_name: str
    model_class: type
    stated_args: Tuple[str, ...]
    overrides: Mapping[str, Any] = {}


@dataclass(frozen=True)
class ModelType:
    """A timm model class as the backbones build it; the families built on it share this one entry.

    Args:
        name: What a dict arch's ``family`` calls it ('vit', 'sam', 'eva', 'hiera').
        fit: ``fit(state, model) -> state``: weights in timm names fitted to the built model (position tables
            resized, ...); what still disagrees is reported by the caller.
        absorption_rules: timm block class -> rule absorbing the frozen norms/activations an adapted Linear of
            that block may compute (see ``snella_seg/models/absorption.py``), matched by exact type.
        holds: Whether timm-keyed weights were made for this type; None for the type assumed when no other's
            ``holds`` says so (the plain ViT).
        build_args: ``timm.create_model`` arguments every model of this type gets.
        base_model: The model a dict arch without ``timm_name`` modifies; None: such a dict needs ``timm_name``.
        final_norm: Whether the model has a final norm that ``TimmViT(final_norm=True)`` may apply.
        timm_backbone_refusal: Why mmseg's ``TIMMBackbone`` cannot rebuild this type; None where it can.
    """
    name: str
    fit: Callable[[StateDict, nn.Module], StateDict]
    absorption_rules: Mapping[type, AbsorptionRule] = field(default_factory=dict)
    holds: Optional[Callable[[Mapping[str, Tensor]], bool]] = None
    build_args: Mapping[str, Any] = field(default_factory=dict)
    base_model: Optional[BaseModel] = None
    final_norm: bool = True
    timm_backbone_refusal: Optional[str] = None


@dataclass(frozen=True)
class CheckpointFormat:
    """One key layout of a family's checkpoints: the ``checkpoint_format`` value that names it.

    Args:
        name: The ``checkpoint_format`` value ('sam', 'dinov2', ...); unique among one backbone's formats.
        recognise: Whether a state dict's keys are in this layout (used by ``checkpoint_format='auto'``).
        to_timm_keys: The state dict renamed to timm's names (pure renaming; fitting is the model type's).
        expected_keys: How the layout's keys look, for the message when no layout is recognised.
        precedence: Layouts are tried from the highest precedence down, in registration order among equals: a
            layout whose keys another one's checkpoints also hold (DINOv2's ``mask_token`` is in EVA-02's too)
            ranks below it; a catch-all (timm's ``blocks.N.*``) ranks lowest.
    """
    name: str
    recognise: Callable[[Mapping[str, Tensor]], bool]
    to_timm_keys: Callable[[Mapping[str, Tensor]], StateDict]
    expected_keys: str
    precedence: int = 0


@dataclass(frozen=True)
class BackboneFamily:
    """Everything the backbones know about one family of encoders: one ``register_family`` call adds it.

    Args:
        name: The family's name ('dinov2').
        model_type: The timm model type its archs and checkpoints are built as.
        archs: Named archs (``TimmViT(arch='dinov2-l')``) of this family.
        formats: The key layouts of its checkpoints.
        backbone: The registered backbone that builds it ('TimmViT' or 'TimmHiera').
    """
    name: str
    model_type: ModelType
    archs: Mapping[str, ArchSpec] = field(default_factory=dict)
    formats: Tuple[CheckpointFormat, ...] = ()
    backbone: str = 'TimmViT'


# The registry: name -> BackboneFamily. Add to it with register_family.
BACKBONE_FAMILIES: Dict[str, BackboneFamily] = {}


def register_family(family: BackboneFamily, replace: bool = False) -> BackboneFamily:
    """Make a family's archs, checkpoint layouts and absorption rules known to the backbones.

    Args:
        family: The entry to add.
        replace: Whether it may replace a family of the same name.

    Returns:
        The registered family.

    Raises:
        ValueError: If the name, one of its archs or a format of the same backbone is taken (unless replacing the
            family that holds it), or an arch names another model type.
    """
    if family.name in BACKBONE_FAMILIES and not replace:
        raise ValueError(f'a backbone family named {family.name!r} is already registered; pick another name, or '
                         'pass replace=True to override it')
    others = [f for f in BACKBONE_FAMILIES.values() if f.name != family.name]
    taken_archs = sorted(set(family.archs) & {a for f in others for a in f.archs})
    taken_formats = sorted({c.name for c in family.formats}
                           & {c.name for f in others if f.backbone == family.backbone for c in f.formats})
    if taken_archs or taken_formats:
        raise ValueError(f'backbone family {family.name!r}: archs {taken_archs} / checkpoint formats '
                         f'{taken_formats} are registered by another family')
    wrong_type = [a for a, spec in family.archs.items() if spec.model_type != family.model_type.name]
    if wrong_type:
        raise ValueError(f'backbone family {family.name!r}: archs {wrong_type} are not of its model type '
                         f'{family.model_type.name!r}')
    BACKBONE_FAMILIES[family.name] = family
    return family


def families_of(backbone: str) -> List[BackboneFamily]:
    """The registered families a backbone builds, in registration order.

    Args:
        backbone: 'TimmViT' or 'TimmHiera'.

    Returns:
        Those families.
    """
    return [f for f in BACKBONE_FAMILIES.values() if f.backbone == backbone]


def named_archs(backbone: str) -> Dict[str, ArchSpec]:
    """Every named arch a backbone builds.

    Args:
        backbone: 'TimmViT' or 'TimmHiera'.

    Returns:
        Arch name -> its spec, in registration order.
    """
    return {name: spec for f in families_of(backbone) for name, spec in f.archs.items()}


def model_types(backbone: str) -> Dict[str, ModelType]:
    """The model types a backbone builds (a dict arch's ``family`` values).

    Args:
        backbone: 'TimmViT' or 'TimmHiera'.

    Returns:
        Name -> model type, in registration order.
    """
    return {f.model_type.name: f.model_type for f in families_of(backbone)}


def checkpoint_formats(backbone: str) -> Tuple[str, ...]:
    """The ``checkpoint_format`` values a backbone accepts.

    Args:
        backbone: 'TimmViT' or 'TimmHiera'.

    Returns:
        'auto' and every registered layout's name.
    """
    return ('auto',) + tuple(c.name for f in families_of(backbone) for c in f.formats)


def find_format(state: Mapping[str, Tensor],
                backbone: Optional[str] = None) -> Optional[Tuple[BackboneFamily, CheckpointFormat]]:
    """The family and layout a state dict's keys are in, trying every layout by precedence.

    Args:
        state: A checkpoint's tensors under its own names.
        backbone: Try only that backbone's layouts; None tries all.

    Returns:
        (family, layout), or None when no layout recognises the keys.
    """
    candidates = [(f, c) for f in BACKBONE_FAMILIES.values() if backbone in (None, f.backbone) for c in f.formats]
    for family, layout in sorted(candidates, key=lambda pair: -pair[1].precedence):
        if layout.recognise(state):
            return family, layout
    return None


def named_format(name: str, backbone: str) -> Tuple[BackboneFamily, CheckpointFormat]:
    """The family and layout a backbone's ``checkpoint_format`` value names.

    Args:
        name: A value of ``checkpoint_formats(backbone)`` other than 'auto'.
        backbone: 'TimmViT' or 'TimmHiera'.

    Returns:
        (family, layout).

    Raises:
        ValueError: If the backbone has no layout of that name.
    """
    for family in families_of(backbone):
        for layout in family.formats:
            if layout.name == name:
                return family, layout
    raise ValueError(f'checkpoint_format must be one of {checkpoint_formats(backbone)}, got {name!r}')


def recognise_format(state: Mapping[str, Tensor]) -> Tuple[BackboneFamily, CheckpointFormat]:
    """The family and layout a state dict's keys are in, from the key names alone.

    Args:
        state: A checkpoint's tensors under its own names.

    Returns:
        (family, layout), the family possibly one another backbone builds (SAM 2's Hiera).

    Raises:
        ValueError: If no registered layout recognises the keys; it lists what each looks like.
    """
    found = find_format(state)
    if found is None:
        layouts = [c.expected_keys for f in families_of('TimmViT') for c in f.formats]
        raise ValueError(f'cannot tell the checkpoint format from its keys (first: {list(state)[:6]}); expected '
                         f'{", ".join(layouts[:-1])} or {layouts[-1]} keys')
    return found


def detect_format(state: Mapping[str, Tensor]) -> str:
    """The name of the layout a state dict's keys are in (``recognise_format``'s layout).

    Args:
        state: A checkpoint's tensors under its own names.

    Returns:
        A ``checkpoint_format`` value ('sam', 'sam2', 'dinov2', 'dinov3', 'eva02', 'clip', 'mmseg', 'timm', ...).

    Raises:
        ValueError: If no registered layout recognises the keys.
    """
    return recognise_format(state)[1].name


def layout_for(state: Mapping[str, Tensor], checkpoint_format: str = 'auto',
               backbone: str = 'TimmViT') -> CheckpointFormat:
    """The layout a backbone reads a checkpoint in: the one ``checkpoint_format`` names, or the one its keys are in.

    Args:
        state: A checkpoint's tensors under its own names.
        checkpoint_format: A value of ``checkpoint_formats(backbone)``.
        backbone: The backbone that is to load it.

    Returns:
        The layout.

    Raises:
        ValueError: If the format is not the backbone's, the keys are in no registered layout, or in one of a
            family another backbone builds (the message names that backbone).
    """
    if checkpoint_format != 'auto':
        return named_format(checkpoint_format, backbone)[1]
    family, layout = recognise_format(state)
    if family.backbone != backbone:
        raise ValueError(f'a checkpoint with {layout.expected_keys} keys holds a {family.name} encoder, which '
                         f'{backbone} does not build: use dict(type={family.backbone!r}, '
                         f"arch={list(family.archs)[-1]!r}) (or the checkpoint's size)")
    return layout


def to_timm_keys(state: Mapping[str, Tensor], checkpoint_format: str = 'auto') -> StateDict:
    """Rename a checkpoint's keys to the names of the timm model ``TimmViT`` builds for it.

    Args:
        state: A checkpoint's tensors under its own names.
        checkpoint_format: A ``TimmViT`` layout name, or 'auto'.

    Returns:
        The tensors under timm's names (not yet fitted to a model).

    Raises:
        ValueError: As ``layout_for``.
    """
    return layout_for(state, checkpoint_format).to_timm_keys(state)


@dataclass(frozen=True)
class ArchSummary:
    """The shape-defining hyper-parameters of an encoder, as far as its weights reveal them.

    Args:
        family: Its model type's name ('vit', 'sam', 'eva').
        embed_dim: Token width.
        depth: Number of blocks.
        mlp_dim: Hidden width of the first block's MLP (SwiGLU: the gate's).
        patch_size: Side of a patch in pixels.
        grid: Position grid (rows, columns).
    """
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

    def like(self) -> Tuple[str, ...]:
        """The named archs of this model type, width, depth and patch, in registration order.

        Returns:
            Their names (empty when none is registered).
        """
        return tuple(name for name, spec in named_archs('TimmViT').items()
                     if (spec.model_type, spec.embed_dim, spec.depth, spec.patch_size)
                     == (self.family, self.embed_dim, self.depth, self.patch_size))


def summarize_timm_state(state: Mapping[str, Tensor]) -> ArchSummary:
    """Guess the architecture a timm-keyed state dict was made for (0 where a tensor is absent).

    Args:
        state: Weights under timm's names.

    Returns:
        Its summary; the model type is the first registered one whose ``holds`` recognises the weights, else the
        one without ``holds`` (the plain ViT).
    """
    patch = state.get('patch_embed.proj.weight')
    pos = state.get('pos_embed')
    fc1 = state.get('blocks.0.mlp.fc1.weight', state.get('blocks.0.mlp.fc1_g.weight'))
    block_ids = {int(m.group(1)) for k in state if (m := re.match(r'blocks\.(\d+)\.', k))}
    types = model_types('TimmViT').values()
    family = next((t.name for t in types if t.holds is not None and t.holds(state)),
                  next(t.name for t in types if t.holds is None))
    if pos is None:
        grid = (0, 0)
    elif pos.ndim == 4:
        grid = (pos.shape[1], pos.shape[2])
    else:  # with or without the class token's position (DINOv2 with registers embeds no prefix positions)
        tokens = pos.shape[1]
        side = math.isqrt(tokens) if math.isqrt(tokens) ** 2 == tokens else math.isqrt(tokens - 1)
        grid = (side, side)
    return ArchSummary(family=family,
                       embed_dim=patch.shape[0] if patch is not None else 0,
                       depth=max(block_ids) + 1 if block_ids else 0,
                       mlp_dim=fc1.shape[0] if fc1 is not None else 0,
                       patch_size=patch.shape[-1] if patch is not None else 0,
                       grid=grid)


def absorb_timm_block_inputs(model: nn.Module) -> List[str]:
    """Let adapted Linears compute the frozen norms/activations before them, by each block type's registered rule.

    Args:
        model: A model holding timm blocks whose Linears SNELLA adapted.

    Returns:
        The absorbed modules' names.
    """
    rules = {block_type: rule for f in BACKBONE_FAMILIES.values()
             for block_type, rule in f.model_type.absorption_rules.items()}
    changed: List[str] = []
    for name, block in model.named_modules():
        rule = rules.get(type(block))
        if rule is not None:
            changed += [f'{name}.{inner}' for inner in rule(block)]
    return changed
