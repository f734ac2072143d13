"""``PEFTBackbone``: wrap any registered backbone, freeze it and apply a method of ``snella_seg.methods``."""
from contextlib import contextmanager
from typing import Any, Dict, Iterator, List, Optional, Tuple

from mmengine.logging import MMLogger
from mmseg.registry import MODELS
from torch import nn

from ..methods import Method, MethodReport, get_method
from ..methods.peft_methods import PEFT, after_base_load
from .snella_backbone import FrozenBaseBackbone


@MODELS.register_module()
class PEFTBackbone(FrozenBaseBackbone):
    """A frozen backbone trained through one registered parameter-efficient method (``method=dict(type=...)``).

    The method is applied once, to the freshly built inner backbone, before its pretrained weights load
    (``init_weights``); the modules it adds are set aside while they load, so the pretrained file needs only the
    base's keys. The updates are the method's trainable tensors (``report.trainable``, base tensors it unfreezes
    included) and any tensor it adds; delta-only state dicts hold those and the base's fingerprint
    (``FrozenBaseBackbone``).

    Args:
        backbone: Config of the inner backbone (e.g. ``TimmViT``), built and frozen here.
        method: The method's registered name under ``type`` and its options, e.g. ``dict(type='adapter',
            bottleneck=64)``; ``snella_seg.methods`` lists the methods and their options. ``type='peft'`` injects
            huggingface peft's method of ``config`` (``dict(type='peft', config=dict(type='LoraConfig', r=32,
            target_modules=...))``, see ``snella_seg.methods.peft_methods``).
        save: What state dicts hold: ``'delta'``, ``'full'`` or ``'auto'`` (see ``FrozenBaseBackbone``).
        check_base: Refuse delta-only checkpoints trained on other frozen weights than this model holds.
        init_cfg: mmengine's initialisation config of this wrapper.

    Raises:
        ValueError: When ``method`` names no registered method.
    """

    def __init__(self, backbone: Dict[str, Any], method: Dict[str, Any], save: str = 'auto',
                 check_base: bool = True, init_cfg: Optional[dict] = None) -> None:
        options = dict(method)
        name = options.pop('type', None)
        chosen = PEFT if name == PEFT.name else get_method(name)
        super().__init__(backbone, save, check_base, init_cfg)
        self.method: Method = chosen
        self.method_options = options
        self.updates_name = chosen.name
        base_tensors = {id(tensor) for tensor in self.backbone.state_dict(keep_vars=True).values()}
        base_modules = dict(self.backbone.named_modules())
        self.report: MethodReport = chosen.apply(self.backbone, **options)
        # Modules a method wrapped (peft's layers hold the base Linear as ``base_layer``), then those it added
        # elsewhere: both are undone while the pretrained weights load.
        self._replaced_modules: Dict[str, nn.Module] = {
            name: module for name, module in base_modules.items()
            if name and self.backbone.get_submodule(name) is not module}
        added = [name for name, _ in self.backbone.named_modules() if name not in base_modules
                 and not any(name.startswith(wrapped + '.') for wrapped in self._replaced_modules)]
        self._added_modules: List[str] = [name for name in added
                                          if not any(name.startswith(outer + '.') for outer in added)]
        self._update_keys = frozenset(set(self.report.trainable) | {
            key for key, tensor in self.backbone.state_dict(keep_vars=True).items() if id(tensor) not in base_tensors})
        MMLogger.get_current_instance().info(str(self.report))

    def is_update_key(self, key: str) -> bool:
        """Whether ``key`` names a tensor the method trains or adds.

        Args:
            key: A key of ``self.backbone.state_dict()``.

        Returns:
            True for an update tensor.
        """
        return key in self._update_keys

    def init_weights(self) -> None:
        """Load the base's pretrained weights with the method's own modules set aside (they keep their init)."""
        with self._added_modules_set_aside():
            super().init_weights()
        if self.method is PEFT:
            after_base_load(self.backbone)

    def merged_backbone(self) -> nn.Module:
        """Fold the method's update into the inner backbone, in place (``Method.merged``).

        Returns:
            The inner backbone, now plain: the base's modules and keys only, with the same outputs.

        Raises:
            NotMergeableError: When the method's update is not a weight delta.
        """
        return self.method.merged(self.backbone)

    @contextmanager
    def _added_modules_set_aside(self) -> Iterator[None]:
        """Show the inner backbone as the plain base while the body runs, then restore the method's modules.

        The method's added modules are taken out, and the modules it wrapped put back in their places (they hold the
        same tensors as the wrappers).
        """
        removed = []
        for name in self._added_modules:
            parent, attribute = self._parent_of(name)
            removed.append((parent, attribute, parent._modules.pop(attribute)))
        for name, module in self._replaced_modules.items():
            parent, attribute = self._parent_of(name)
            removed.append((parent, attribute, parent._modules[attribute]))
            parent._modules[attribute] = module
        try:
            yield
        finally:
            for parent, attribute, module in reversed(removed):
                parent._modules[attribute] = module

    def _parent_of(self, name: str) -> Tuple[nn.Module, str]:
        """Find the module of the inner backbone that holds submodule ``name``.

        Returns:
            That module and the attribute it holds ``name`` under.
        """
        parent_name, _, attribute = name.rpartition('.')
        return self.backbone.get_submodule(parent_name), attribute
