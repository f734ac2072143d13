"""``SNELLAConfig``: SNELLA's options in one place, with their defaults, docs, validation and serialisation.

Configs (``model.backbone.snella=dict(...)``), ``inject_snella``, exported files and ``load_deltas`` all go through
it, so an option is added, documented and checked here once.
"""
import re
from dataclasses import MISSING, asdict, dataclass, fields
from typing import Any, Dict, List, Mapping, Sequence, Tuple

from .kernels import get_kernel
from .layer import check_fraction, check_rank
from .masks import get_mask

TARGETS_EXAMPLE = r'[r".*blocks\.\d+\.attn\.qkv", r".*blocks\.\d+\.mlp\.fc\d"]'
# Options that change what a trained update computes at inference; the others only change training.
INFERENCE_OPTIONS = ('targets', 'rank', 'kernel', 'mask', 'split_qkv')


@dataclass
class SNELLAConfig:
    r"""SNELLA's options, as ``model.backbone.snella=dict(...)`` in a config gives them.

    Args:
        targets: Regular expressions that must fully match the qualified names of the Linear layers to adapt, e.g.
            ``[r".*blocks\.\d+\.attn\.qkv", r".*blocks\.\d+\.mlp\.fc\d"]``; each must match at least one.
        rank: Rank of every update's factors; divisible by the kernel's factor groups (2 for snell and snella).
        kernel: A registered kernel (``kernels.KERNELS``): ``'snella'``, ``'snell'``, ``'linear'`` (LoRA) or one
            added with ``kernels.register_kernel``.
        mask: A registered mask (``masks.MASKS``): ``'magnitude'`` (kept entries scaled by their detached
            magnitude, the authors' code), ``'binary'`` (kept as they are) or one added with ``masks.register_mask``.
        sparsity: Initial fraction of zeroed update entries, in [0, 1); an allocator hook changes it in training.
        dropout: Dropout on the update branch's input, in [0, 1).
        drop_path: Per-sample probability of dropping the whole update branch, in [0, 1).
        checkpoint: Rebuild the dense ΔW in backward instead of storing it (same results, less memory).
        split_qkv: Give a fused ``qkv`` projection three independent updates (q, k, v), as the authors do.
        absorb_activations: Let adapted layers of timm ViT/SAM blocks compute the frozen LayerNorm or activation
            before them (same outputs, less memory). Applied by ``SNELLABackbone``, which knows the architecture;
            ``inject_snella`` alone does not absorb.

    Raises:
        ValueError: No targets, a target that is not a regular expression, an unknown kernel or mask, a rank the
            kernel cannot split, or a fraction outside [0, 1).
    """
    targets: Sequence[str]
    rank: int
    kernel: str = 'snella'
    mask: str = 'magnitude'
    sparsity: float = 0.0
    dropout: float = 0.0
    drop_path: float = 0.0
    checkpoint: bool = True
    split_qkv: bool = True
    absorb_activations: bool = True

    def __post_init__(self) -> None:
        """Check every option once, here: layers and the injection rely on it.

        Raises:
            ValueError: If an option is missing, out of range or names an unknown kernel or mask.
        """
        if isinstance(self.targets, str):
            self.targets = [self.targets]
        self.targets = list(self.targets)
        if not self.targets:
            raise ValueError(f'SNELLA needs "targets": regular expressions of the Linear layers to adapt, e.g. '
                             f'{TARGETS_EXAMPLE}')
        for pattern in self.targets:
            try:
                re.compile(pattern)
            except (re.error, TypeError) as err:
                raise ValueError(f'SNELLA target {pattern!r} is not a valid regular expression: {err}') from None
        check_rank(self.rank, get_kernel(self.kernel))
        get_mask(self.mask)
        for name in ('sparsity', 'dropout', 'drop_path'):
            check_fraction(name, getattr(self, name))

    @classmethod
    def option_names(cls) -> Tuple[str, ...]:
        """Every option's name.

        Returns:
            The names, in the order of the fields.
        """
        return tuple(f.name for f in fields(cls))

    @classmethod
    def from_dict(cls, options: Mapping[str, Any], origin: str = 'SNELLA options') -> 'SNELLAConfig':
        """The config of a dict such as a config file's ``snella=dict(...)``.

        Args:
            options: Option name -> value.
            origin: Where the dict came from, named in error messages.

        Returns:
            The config.

        Raises:
            ValueError: A key is no option, a required option is missing, or a value is invalid.
        """
        unknown = sorted(set(options) - set(cls.option_names()))
        if unknown:
            raise ValueError(f'unknown SNELLA option(s) {unknown} in {origin}; '
                             f'valid options: {list(cls.option_names())}')
        missing = [f.name for f in fields(cls) if f.default is MISSING and f.name not in options]
        if 'targets' in missing:
            raise ValueError(f'{origin} needs "targets": regular expressions of the Linear layers to adapt, e.g. '
                             f'{TARGETS_EXAMPLE}')
        if missing:
            raise ValueError(f'{origin} needs {missing}: see SNELLAConfig for what they mean')
        return cls(**options)

    def to_dict(self) -> Dict[str, Any]:
        """Every option, JSON-serialisable: ``from_dict(to_dict())`` gives this config back.

        Returns:
            Option name -> value.
        """
        return asdict(self)

    def layer_kwargs(self) -> Dict[str, Any]:
        """The options ``SNELLALinear`` takes.

        Returns:
            Keyword arguments of ``SNELLALinear`` other than ``base`` and ``split``.
        """
        return dict(rank=self.rank, kernel=self.kernel, sparsity=self.sparsity, mask=self.mask,
                    dropout=self.dropout, drop_path=self.drop_path, checkpoint=self.checkpoint)

    def differences(self, other: 'SNELLAConfig',
                    names: Sequence[str] = INFERENCE_OPTIONS) -> List[Tuple[str, Any, Any]]:
        """The options of ``names`` whose values differ between the two configs.

        Args:
            other: The config to compare with.
            names: The options compared; by default those that change what a trained update computes.

        Returns:
            ``(option, this value, other value)`` for each that differs.
        """
        return [(n, getattr(self, n), getattr(other, n)) for n in names if getattr(self, n) != getattr(other, n)]

