"""Parameter-efficient fine-tuning methods that no library provides, in pure PyTorch, for timm's ViT and SAM.

``get_method(name).apply(model, **options)`` freezes ``model`` and adds or unfreezes the method's trainable parts
in place, keeping the base's state-dict keys; ``get_method(name).merged(model)`` folds a weight-delta method back
into a plain model, and raises ``NotMergeableError`` for the others. Registered here: ``bitfit``, ``ln_tune``,
``partial``, ``adapter``, ``adaptformer``, ``ssf``, ``vpt_deep``, ``mona``; add one with ``register_method``.

For a wrapper that trains, saves and reloads a method: ``apply`` once to a freshly built model (a second apply of a
method that adds modules is refused); the base's parameter names and tensors stay as they are, so a checkpoint needs
only ``report.trainable`` (the method's tensors, plus the base tensors it unfreezes) and the base reloads from its
pretrained file before ``apply``. Options are keyword arguments of ``apply`` (``partial``: ``k``; the adapters:
``bottleneck``, ``dropout``; ``adaptformer`` also ``scale``; ``ssf``: ``init_std``; ``vpt_deep``: ``num_tokens``,
``dropout``).

huggingface peft's LoRA family is ``peft_methods.PEFT`` (``type='peft'`` in ``PEFTBackbone``), kept out of
``METHODS`` because peft wraps the Linears it adapts, renaming their keys; peft is imported only when it is applied.

Nothing here imports OpenMMLab; the registered glue belongs to ``snella_seg.models`` and ``snella_seg.engine``.
"""
from . import adapter, adaptformer, bitfit, ln_tune, mona, partial, ssf, vpt  # noqa: F401  (each registers itself)
from .blocks import transformer_blocks
from .registry import METHODS, Method, MethodReport, NotMergeableError, get_method, register_method

__all__ = ['METHODS', 'Method', 'MethodReport', 'NotMergeableError', 'get_method', 'register_method',
           'transformer_blocks']
