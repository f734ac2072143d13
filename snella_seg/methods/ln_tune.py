"""LN-Tune: train only the normalisation layers' affine parameters.

Every normalisation layer ``y = gamma * (x - mu) / sigma + beta`` keeps its statistics and learns ``gamma`` and
``beta``; all else is frozen (the baseline of V-PETL Bench, Xin et al., NeurIPS 2024 Datasets and Benchmarks, after
Zhao et al., "Tuning LayerNorm in Attention: Towards Efficient Multi-Modal LLM Finetuning", ICLR 2024). The update is
the norms' own tensors: the trained model is already a plain one.
"""
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .bitfit import already_plain
from .registry import Method, MethodReport, freeze, register_method, report

NORM_TYPES = (nn.LayerNorm, nn.GroupNorm, _BatchNorm, nn.RMSNorm)


def apply_ln_tune(model: nn.Module) -> MethodReport:
    """Freeze ``model`` and train the weight and bias of every normalisation layer.

    Args:
        model: The model to adapt in place.

    Returns:
        What trains.
    """
    freeze(model)
    for module in model.modules():
        if isinstance(module, NORM_TYPES):
            for parameter in module.parameters(recurse=False):
                parameter.requires_grad_(True)
    return report('ln_tune', model)


LN_TUNE = register_method(Method(
    name='ln_tune', apply=apply_ln_tune, merge=already_plain,
    citation='Zhao et al. Tuning LayerNorm in Attention: Towards Efficient Multi-Modal LLM Finetuning. ICLR 2024; '
             'as a baseline in Xin et al. V-PETL Bench. NeurIPS 2024 Datasets and Benchmarks'))
