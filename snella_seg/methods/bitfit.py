"""BitFit: train only the bias terms.

Ben Zaken, Goldberg and Ravfogel, "BitFit: Simple Parameter-efficient Fine-tuning for Transformer-based Masked
Language-models", ACL 2022. Every weight stays frozen; every bias ``b`` of the model (linear, convolution and
normalisation layers) is trained, so a layer computes ``W x + b'``. The update is the biases themselves: the trained
model is already a plain one.
"""
from torch import nn

from .registry import Method, MethodReport, freeze, register_method, report


def apply_bitfit(model: nn.Module) -> MethodReport:
    """Freeze ``model`` and train every parameter named ``bias``.

    Args:
        model: The model to adapt in place.

    Returns:
        What trains.
    """
    freeze(model)
    for name, parameter in model.named_parameters():
        if name.split('.')[-1] == 'bias':
            parameter.requires_grad_(True)
    return report('bitfit', model)


def already_plain(model: nn.Module) -> nn.Module:
    """The merge of a method that trains the base's own tensors: nothing to fold.

    Args:
        model: The trained model.

    Returns:
        ``model`` unchanged.
    """
    return model


BITFIT = register_method(Method(
    name='bitfit', apply=apply_bitfit, merge=already_plain,
    citation='Ben Zaken, Goldberg, Ravfogel. BitFit: Simple Parameter-efficient Fine-tuning for Transformer-based '
             'Masked Language-models. ACL 2022'))
