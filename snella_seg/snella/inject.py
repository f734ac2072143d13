"""Put SNELLA updates into chosen Linear layers of any model, freeze the rest, and fold them back out."""
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Sequence, Union

from torch import nn

from .config import SNELLAConfig
from .layer import SNELLALinear

# timm's ViT and SAM encoders name their fused attention projection ``qkv``.
FUSED_QKV_PATTERN = r'(.*\.)?qkv'


@dataclass
class InjectionReport:
    """Which layers were adapted and what remains trainable.

    Args:
        layers: Qualified names of the adapted Linear layers.
        trainable: Trainable parameters (elements) of the model after injection.
        total: All parameters (elements) of the model.
    """
    layers: List[str] = field(default_factory=list)
    trainable: int = 0
    total: int = 0

    @property
    def trainable_fraction(self) -> float:
        """Trainable share of all parameters, in [0, 1]."""
        return self.trainable / max(self.total, 1)

    def __str__(self) -> str:
        """Return one line: the adapted layers, summarised, and the trainable parameters."""
        return (f'SNELLA adapted {len(self.layers)} Linear layers ({summarize_names(self.layers)}); '
                f'trainable {self.trainable:,} of {self.total:,} parameters ({100 * self.trainable_fraction:.3f}%)')


def summarize_names(names: Sequence[str], limit: int = 12) -> str:
    """Collapse numbered module names (``blocks.0.mlp.fc1`` ...) into patterns so long lists stay readable.

    Args:
        names: Qualified module names.
        limit: Patterns shown at most; the rest are counted.

    Returns:
        The patterns with their counts, comma-separated (``blocks.*.mlp.fc1 (x12)``).
    """
    groups: Dict[str, int] = {}
    for name in names:
        key = re.sub(r'(?<=\.)\d+(?=\.|$)|^\d+(?=\.)', '*', name)
        groups[key] = groups.get(key, 0) + 1
    parts = [f'{k} (x{n})' if n > 1 else k for k, n in groups.items()]
    return ', '.join(parts[:limit]) + (f', ... {len(parts) - limit} more' if len(parts) > limit else '')


def _match_targets(model: nn.Module, targets: Sequence[str]) -> List[str]:
    modules = dict(model.named_modules())
    linear_names = [n for n, m in modules.items() if isinstance(m, nn.Linear)]
    chosen: List[str] = []
    for pattern in targets:  # valid regular expressions: SNELLAConfig checked them
        regex = re.compile(pattern)
        hits = [n for n in modules if n and regex.fullmatch(n)]
        non_linear = [n for n in hits if not isinstance(modules[n], nn.Linear)]
        if non_linear:
            raise ValueError(
                f'SNELLA target {pattern!r} matches modules that are not nn.Linear: '
                f'{summarize_names(non_linear)} ({type(modules[non_linear[0]]).__name__}). Targets must match '
                f'Linear layers by full qualified name; Linear layers here: {summarize_names(linear_names)}')
        if not hits:
            raise ValueError(
                f'SNELLA target {pattern!r} matches no module (patterns must match the whole qualified name, '
                f'e.g. r".*\\.mlp\\.fc1"). Linear layers here: {summarize_names(linear_names)}')
        chosen.extend(n for n in hits if n not in chosen)
    return chosen


def inject_snella(model: nn.Module, config: Union[SNELLAConfig, str, Sequence[str], None] = None,
                  **options: Any) -> InjectionReport:
    """Replace the Linear layers whose qualified names fully match the targets by ``SNELLALinear``.

    Every other parameter is frozen. Three calls do the same: ``inject_snella(model, SNELLAConfig(...))``,
    ``inject_snella(model, [r'.*qkv'], rank=4, kernel='linear')`` and ``inject_snella(model, targets=[r'.*qkv'],
    rank=4, kernel='linear')``. With ``split_qkv`` a fused ``qkv`` projection gets three independent updates (q, k,
    v) as in the authors' placement. ``absorb_activations`` is not applied here: ``SNELLABackbone`` does it, knowing
    the architecture.

    Args:
        model: The model to adapt in place.
        config: A ``SNELLAConfig``, or the targets (regular expressions of qualified Linear names).
        **options: Without a ``SNELLAConfig``: its options (``targets`` too, where ``config`` is not given).

    Returns:
        Which layers were adapted and how many parameters remain trainable.

    Raises:
        TypeError: Options beside a ``SNELLAConfig``, targets given twice, or none given.
        ValueError: An option is unknown or invalid, or a target matches no Linear layer.
    """
    if isinstance(config, SNELLAConfig):
        if options:
            raise TypeError(f'inject_snella got a SNELLAConfig and options {sorted(options)}: put them in the config '
                            '(dataclasses.replace(config, ...))')
    else:
        if config is not None and 'targets' in options:
            raise TypeError('inject_snella got the targets twice: as its second argument and as targets=')
        if config is None and 'targets' not in options:
            raise TypeError('inject_snella needs the layers to adapt: a SNELLAConfig, or the targets as its second '
                            'argument or targets=, e.g. inject_snella(model, targets=[r".*qkv"], rank=4)')
        config = SNELLAConfig.from_dict(dict(options, targets=options.get('targets', config)),
                                        origin='inject_snella')
    names = _match_targets(model, config.targets)
    model.requires_grad_(False)
    for name in names:
        parent_name, _, child = name.rpartition('.')
        parent = model.get_submodule(parent_name) if parent_name else model
        base = getattr(parent, child)
        split = 3 if config.split_qkv and re.fullmatch(FUSED_QKV_PATTERN, name) and base.out_features % 3 == 0 else 1
        setattr(parent, child, SNELLALinear(base, split=split, **config.layer_kwargs()))
    return parameter_report(model, names)


def parameter_report(model: nn.Module, layers: Sequence[str]) -> InjectionReport:
    """Count trainable and total parameters of ``model`` for the given adapted layers.

    Args:
        model: The adapted model.
        layers: Qualified names of its adapted layers.

    Returns:
        The report.
    """
    params = list(model.parameters())
    return InjectionReport(layers=list(layers), trainable=sum(p.numel() for p in params if p.requires_grad),
                           total=sum(p.numel() for p in params))


def _pass_through(x, *args, **kwargs):
    return x


def absorb_activation(module: nn.Module, layer: SNELLALinear) -> None:
    """Let ``layer`` compute the frozen ``module`` (an activation, a LayerNorm) that feeds it.

    ``module``'s own forward becomes a pass-through. The fused layer then stores the module's input only and
    recomputes the module in backward, instead of the module storing its input and the layer the output: in a ViT
    MLP, the 4x-wide hidden tensor is stored once, not twice. ``module`` stays where it is (same state-dict keys).
    Exact only where the module's output goes straight into ``layer`` and nowhere else; the caller checks that
    (it knows the architecture). ``merge_snella`` undoes it.

    Args:
        module: The frozen module whose output feeds ``layer`` alone.
        layer: The adapted layer that takes its work over.

    Raises:
        TypeError: ``layer`` is not a ``SNELLALinear``.
        ValueError: Either already takes part in an absorption, or ``module`` has trainable parameters.
    """
    if not isinstance(layer, SNELLALinear):
        raise TypeError(f'only a SNELLA layer can absorb a module, got {type(layer).__name__}')
    if 'forward' in module.__dict__ or layer.absorbed is not None:
        raise ValueError(f'{type(module).__name__} or its layer already takes part in an absorption')
    if any(p.requires_grad for p in module.parameters()):
        raise ValueError(f'{type(module).__name__} has trainable parameters; only frozen modules can be absorbed')
    object.__setattr__(layer, 'absorbed', module)
    module.forward = _pass_through


def merge_snella(model: nn.Module) -> nn.Module:
    """Fold every SNELLA update into its base weight in place.

    The model then has only plain Linear layers, and absorbed modules compute again themselves.

    Args:
        model: A model with ``SNELLALinear`` layers.

    Returns:
        ``model``, changed in place.
    """
    for name, module in list(model.named_modules()):
        if isinstance(module, SNELLALinear):
            parent_name, _, child = name.rpartition('.')
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, module._folded_linear())
            if module.absorbed is not None:
                del module.absorbed.forward
    return model
