"""The method registry: adding a parameter-efficient method is one ``register_method(Method(...))``.

A method changes a model in place: it freezes every parameter, then adds or unfreezes the parts it trains. The base
model's own state-dict keys never change (new parts are added beside them), so a wrapper can save only the trainable
tensors and reload the base from its pretrained file.
"""
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

from torch import nn

from ..snella.registry import add_entry, find_entry


@dataclass(frozen=True)
class MethodReport:
    """What a method trains in a model.

    Args:
        method: The registered name of the method applied.
        trainable: Names of the trainable parameters, in ``named_parameters`` order.
        trainable_params: Number of trainable scalars.
        total_params: Number of scalars in the model after the method was applied (its own parts included).
    """
    method: str
    trainable: Tuple[str, ...]
    trainable_params: int
    total_params: int

    @property
    def fraction(self) -> float:
        """Trainable share of all parameters, in [0, 1]."""
        return self.trainable_params / max(self.total_params, 1)

    def __str__(self) -> str:
        return (f'{self.method}: {self.trainable_params:,} of {self.total_params:,} parameters trainable '
                f'({100 * self.fraction:.3f}%) in {len(self.trainable)} tensors')


class NotMergeableError(ValueError):
    """The method's update is not a weight delta, so the model cannot be reduced to a plain one."""


@dataclass(frozen=True)
class Method:
    """One parameter-efficient fine-tuning method.

    Args:
        name: What configs call it (``method='adapter'``).
        apply: ``apply(model, **options) -> MethodReport``: freezes all of ``model`` and adds or unfreezes the
            method's trainable parts in place.
        citation: The paper the method comes from.
        merge: ``merge(model) -> model``: folds the method's update into the base weights and removes its parts,
            leaving a plain model with the same outputs; None when the update is not a weight delta.
        not_mergeable_because: Why ``merge`` is None (what the method adds that no weight can hold).
    """
    name: str
    apply: Callable[..., MethodReport]
    citation: str
    merge: Optional[Callable[[nn.Module], nn.Module]] = None
    not_mergeable_because: str = ''

    def __post_init__(self):
        if self.merge is None and not self.not_mergeable_because:
            raise ValueError(f'method {self.name!r} has no merge; say why in not_mergeable_because')

    @property
    def mergeable(self) -> bool:
        """Whether the method's update folds into the base weights."""
        return self.merge is not None

    def merged(self, model: nn.Module) -> nn.Module:
        """Fold the method's update into ``model`` in place.

        Args:
            model: A model the method was applied to (and trained).

        Returns:
            The same model, now plain: the base's modules and state-dict keys only, with the same outputs.

        Raises:
            NotMergeableError: When the method's update is not a weight delta.
        """
        if self.merge is None:
            raise NotMergeableError(f'{self.name} cannot be merged into the base weights: '
                                    f'{self.not_mergeable_because}; keep its modules at inference')
        return self.merge(model)


METHODS: Dict[str, Method] = {}


def register_method(method: Method, replace: bool = False) -> Method:
    """Make ``method`` available to ``get_method(method.name)`` and to configs.

    Args:
        method: The method to register.
        replace: Override a method registered under the same name.

    Returns:
        ``method``.

    Raises:
        ValueError: When the name is taken and ``replace`` is False.
    """
    return add_entry(METHODS, method, 'method', replace)


def get_method(name: str) -> Method:
    """The registered method of that name.

    Args:
        name: A registered method's name.

    Returns:
        The method.

    Raises:
        ValueError: When no method of that name is registered; the message lists the registered ones.
    """
    return find_entry(METHODS, name, 'method', 'snella_seg.methods.register_method')


def freeze(model: nn.Module) -> None:
    """Stop gradients to every parameter of ``model``.

    Args:
        model: The model to freeze in place.
    """
    for parameter in model.parameters():
        parameter.requires_grad_(False)


def report(name: str, model: nn.Module) -> MethodReport:
    """The ``MethodReport`` of ``model`` as it stands: its trainable parameters and counts.

    Args:
        name: The method's registered name.
        model: The model the method was applied to.

    Returns:
        The report.
    """
    named = list(model.named_parameters())
    trainable = tuple(key for key, parameter in named if parameter.requires_grad)
    return MethodReport(method=name, trainable=trainable,
                        trainable_params=sum(p.numel() for _, p in named if p.requires_grad),
                        total_params=sum(p.numel() for _, p in named))
