"""Only what trains reaches the optimizer: the frozen backbone gets no optimizer state at all."""
import logging
from contextlib import contextmanager
from typing import Iterator, List, Optional

from mmengine.logging import MMLogger
from mmengine.optim import DefaultOptimWrapperConstructor
from mmseg.registry import OPTIM_WRAPPER_CONSTRUCTORS
from torch import nn


class _PerParameterLines(logging.Filter):
    """mmengine logs one line per parameter option and warns once per frozen tensor: thousands at ViT-L."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (message.startswith('paramwise_options -- ') or message.endswith(' is skipped since its '
                                                                                      'requires_grad=False'))


@contextmanager
def _without_per_parameter_lines() -> Iterator[None]:
    logger = MMLogger.get_current_instance()
    quiet = _PerParameterLines()
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class SNELLAOptimWrapperConstructor(DefaultOptimWrapperConstructor):
    """``DefaultOptimWrapperConstructor`` that drops frozen parameters and never decays kernel scalars.

    Parameters of at most one dimension (SNELLA's alpha, gamma, beta, norms, biases) get no weight decay; the
    usual ``paramwise_cfg.custom_keys`` set separate lr multipliers, e.g. ``{'.deltas.': dict(lr_mult=1.0),
    'decode_head': dict(lr_mult=10.0)}``.

    Args:
        optim_wrapper_cfg: The config's ``optim_wrapper`` without ``constructor`` and ``paramwise_cfg``, e.g.
            ``dict(type='OptimWrapper', optimizer=dict(type='AdamW', lr=3e-4, weight_decay=0.01))``. Its
            ``weight_decay`` (times any ``decay_mult``) applies to trainable tensors of two or more dimensions
            only: the factors and the heads' weights.
        paramwise_cfg: mmengine's per-parameter options (``custom_keys``, ``bias_lr_mult``, ...). None (default)
            is an empty dict. ``norm_decay_mult`` defaults to 0.0 here, which keeps ``paramwise_cfg`` non-empty:
            only then does the parent class visit each parameter, which is how frozen ones get dropped. Whatever
            it says, tensors of at most one dimension get no weight decay.
    """

    def __init__(self, optim_wrapper_cfg: dict, paramwise_cfg: Optional[dict] = None) -> None:
        paramwise_cfg = dict(paramwise_cfg or {})
        paramwise_cfg.setdefault('norm_decay_mult', 0.0)  # non-empty, so the parent always calls add_params
        super().__init__(optim_wrapper_cfg, paramwise_cfg)

    def add_params(self, params: List[dict], module: nn.Module, prefix: str = '', **kwargs) -> None:
        if prefix:  # recursion from the parent class: let it collect as usual
            return super().add_params(params, module, prefix, **kwargs)
        collected: List[dict] = []
        with _without_per_parameter_lines():  # the summary below replaces them
            super().add_params(collected, module, prefix, **kwargs)
        kept = 0
        for group in collected:
            param = group['params'][0]
            if not param.requires_grad:
                continue
            if param.ndim <= 1:  # kernel scalars (alpha, gamma, beta), norms, biases: never decayed, even
                group['weight_decay'] = 0.0  # when a custom key (which bypasses mmengine's own rules) matches
            params.append(group)
            kept += param.numel()
        frozen = sum(p.numel() for p in module.parameters() if not p.requires_grad)
        MMLogger.get_current_instance().info(
            f'optimizer holds {kept:,} trainable parameters in {len(params)} groups; {frozen:,} frozen '
            f'parameters get no optimizer state')
