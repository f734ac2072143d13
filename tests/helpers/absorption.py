"""What absorption tests compare: a backbone's features and every gradient, with and without absorbed modules."""
from typing import List

import torch
from torch import nn


def absorbed_module_names(model: nn.Module) -> List[str]:
    """Modules whose work an adapted layer does: absorption replaces their ``forward`` by a pass-through."""
    return sorted(name for name, module in model.named_modules() if 'forward' in module.__dict__)


def features_and_gradients(model: nn.Module, images: torch.Tensor) -> List[torch.Tensor]:
    """One training forward and backward: the outputs, the input's gradient and every trainable tensor's."""
    images = images.clone().requires_grad_(True)
    outputs = model.train()(images)
    sum(o.square().mean() for o in outputs).backward()
    return [o.detach() for o in outputs] + [images.grad] + [p.grad for p in model.parameters() if p.requires_grad]


def assert_absorption_changes_nothing(plain: nn.Module, absorbed: nn.Module, images: torch.Tensor) -> None:
    expected, got = features_and_gradients(plain, images), features_and_gradients(absorbed, images)
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
