"""Partial-k: train only the last ``k`` transformer blocks.

The classic partial fine-tuning baseline (Yosinski et al., "How transferable are features in deep neural
networks?", NeurIPS 2014; Partial-1 in VPT, Jia et al., ECCV 2022, and V-PETL Bench): blocks ``L-k .. L-1`` are
fine-tuned in full, everything before them frozen. The update is the blocks' own tensors: the trained model is
already a plain one.
"""
from torch import nn

from .bitfit import already_plain
from .blocks import transformer_blocks
from .registry import Method, MethodReport, freeze, register_method, report


def apply_partial(model: nn.Module, k: int = 1) -> MethodReport:
    """Freeze ``model`` and train its last ``k`` transformer blocks.

    Args:
        model: The model to adapt in place.
        k: How many blocks, counted from the last, to train.

    Returns:
        What trains.

    Raises:
        ValueError: When ``k`` is not between 1 and the number of blocks.
    """
    blocks = transformer_blocks(model)
    if not 1 <= k <= len(blocks):
        raise ValueError(f'partial: k={k} must be between 1 and the {len(blocks)} blocks of the model')
    freeze(model)
    for _, block in blocks[-k:]:
        block.requires_grad_(True)
    return report('partial', model)


PARTIAL = register_method(Method(
    name='partial', apply=apply_partial, merge=already_plain,
    citation='Yosinski et al. How transferable are features in deep neural networks? NeurIPS 2014; Partial-k as in '
             'Jia et al. Visual Prompt Tuning. ECCV 2022'))
