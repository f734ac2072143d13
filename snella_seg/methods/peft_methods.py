"""huggingface peft's LoRA family (LoRA, DoRA, AdaLoRA, LoHa, LoKr) as one method, ``PEFT`` (``type='peft'``).

peft is used, not rewritten: ``apply_peft(model, config=dict(type='LoraConfig', r=32, target_modules=...))`` builds
the named peft config class from the options and injects it with ``peft.inject_adapter_in_model`` into the Linears
``target_modules`` matches; the trainable tensors are exactly the ones peft marks trainable. AdaLoRA's tuner object
(its rank allocator) must outlive the injection, so AdaLoRA is injected through its tuner class, which is what
``inject_adapter_in_model`` does for every method; ``peft_tuner_of`` returns it for the hook that calls
``update_and_allocate``.

The project's own LoRA (``SNELLABackbone`` with ``kernel='linear'``) computes the same function as peft's LoRA with
``lora_alpha == r`` (ΔW = B A), but in one fused Linear that stores only the input for backward; peft's adds a
second branch and stores its activations. peft is imported when the method is applied, not with this module.
"""
import weakref
from typing import Any, Dict, Optional

import torch
from torch import nn

from .registry import Method, MethodReport, freeze, report

ADAPTER_NAME = 'default'
# The peft tuner object of each model AdaLoRA was applied to (the rank allocator lives on it).
_TUNERS: 'weakref.WeakKeyDictionary[nn.Module, nn.Module]' = weakref.WeakKeyDictionary()


def peft_config(config: Dict[str, Any]) -> Any:
    """Build a peft config object from its class name and options.

    Args:
        config: ``type``, a peft config class (``'LoraConfig'``, ``'AdaLoraConfig'``, ``'LoHaConfig'``,
            ``'LoKrConfig'``; DoRA is ``LoraConfig`` with ``use_dora=True``), and that class's options.

    Returns:
        The peft config.

    Raises:
        ValueError: When ``type`` is missing or names no peft config class.
    """
    import peft
    options = dict(config)
    name = options.pop('type', None)
    config_class = getattr(peft, str(name), None)
    if not (isinstance(config_class, type) and issubclass(config_class, peft.PeftConfig)):
        raise ValueError(f'peft: config type {name!r} is no peft config class; use e.g. LoraConfig, AdaLoraConfig, '
                         'LoHaConfig or LoKrConfig (DoRA: LoraConfig with use_dora=True)')
    return config_class(**options)


def apply_peft(model: nn.Module, config: Dict[str, Any]) -> MethodReport:
    """Freeze ``model`` and inject a peft method into the Linears its ``target_modules`` match.

    Args:
        model: The model to adapt in place.
        config: The peft config as a dict (``peft_config``).

    Returns:
        What trains: the tensors peft marks trainable.
    """
    import peft
    from peft.tuners.adalora import AdaLoraConfig
    built = peft_config(config)
    freeze(model)
    if isinstance(built, AdaLoraConfig):
        tuner_class = peft.mapping.PEFT_TYPE_TO_TUNER_MAPPING[built.peft_type]
        _TUNERS[model] = tuner_class(model, built, adapter_name=ADAPTER_NAME)
    else:
        peft.inject_adapter_in_model(built, model, adapter_name=ADAPTER_NAME)
    return report('peft', model)


def peft_tuner_of(model: nn.Module) -> Optional[nn.Module]:
    """The peft tuner that adapted ``model`` (kept for AdaLoRA only).

    Args:
        model: A model ``apply_peft`` adapted.

    Returns:
        The tuner (``update_and_allocate`` and ``rankallocator`` live on it), or None.
    """
    return _TUNERS.get(model)


@torch.no_grad()
def after_base_load(model: nn.Module) -> None:
    """Recompute what peft derived from the base weights at injection, once the pretrained weights are in place.

    DoRA's magnitude vector starts as the column norms of ``W0 + ΔW``; peft computes it when it injects, which in
    ``PEFTBackbone`` is before the pretrained weights load, so it is computed again here, in place.

    Args:
        model: A model ``apply_peft`` adapted, its base weights just loaded.
    """
    for module in model.modules():
        magnitudes = getattr(module, 'lora_magnitude_vector', None)
        if not magnitudes or ADAPTER_NAME not in magnitudes:
            continue
        lora_weight = module.lora_B[ADAPTER_NAME].weight @ module.lora_A[ADAPTER_NAME].weight
        magnitude = magnitudes[ADAPTER_NAME]
        magnitude.weight.copy_(magnitude.get_weight_norm(module.get_base_layer().weight, lora_weight,
                                                         module.scaling[ADAPTER_NAME]))


def merge_peft(model: nn.Module) -> nn.Module:
    """Fold every peft layer's update into its base layer and put the base layer back in its place.

    Args:
        model: A model ``apply_peft`` adapted (and trained).

    Returns:
        ``model``, plain: its Linears hold W0 + ΔW.
    """
    from peft.tuners.tuners_utils import BaseTunerLayer
    layers = [(name, module) for name, module in model.named_modules() if isinstance(module, BaseTunerLayer)]
    for name, layer in layers:
        layer.merge()
        parent_name, _, attribute = name.rpartition('.')
        setattr(model.get_submodule(parent_name), attribute, layer.get_base_layer())
    _TUNERS.pop(model, None)
    return model


# Not in METHODS: peft wraps the Linears it adapts (``qkv.weight`` becomes ``qkv.base_layer.weight``), which the
# registry's methods never do; PEFTBackbone resolves ``type='peft'`` to it.
PEFT = Method(
    name='peft', apply=apply_peft, merge=merge_peft,
    citation='huggingface peft (Mangrulkar et al., 2022): LoRA (Hu et al., ICLR 2022), DoRA (Liu et al., ICML '
             '2024), AdaLoRA (Zhang et al., ICLR 2023), LoHa (Hyeon-Woo et al., ICLR 2022), LoKr (Yeh et al., ICLR '
             '2024)')
