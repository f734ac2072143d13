"""What SNELLA's hooks need from mmengine's Runner: the bare model, the torch optimizers, the EMA copies, and
callbacks that run right before each optimizer step."""
from collections import defaultdict
from typing import Callable, Dict, List, Sequence, Tuple

import torch
from mmengine.model import is_model_wrapper


def unwrap_model(runner) -> torch.nn.Module:
    """The Runner's model without its DDP (or other mmengine) wrapper: parameter names carry no ``module.``."""
    return runner.model.module if is_model_wrapper(runner.model) else runner.model


def torch_optimizers(optim_wrapper) -> List[torch.optim.Optimizer]:
    """The torch optimizers behind an ``OptimWrapper`` or an ``OptimWrapperDict``."""
    wrappers = optim_wrapper.values() if hasattr(optim_wrapper, 'optim_wrappers') else [optim_wrapper]
    return [w.optimizer for w in wrappers]


def ema_models(runner) -> List[torch.nn.Module]:
    """The averaged copies that hooks such as mmengine's EMAHook keep of the model."""
    models = (getattr(getattr(hook, 'ema_model', None), 'module', None) for hook in runner.hooks)
    return [m for m in models if m is not None]


def non_finite_flag(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """A float32 scalar on the first tensor's device, 1 when any element of ``tensors`` is NaN or infinite, else 0.

    One operation per device and dtype (not one per tensor), and no host sync: the AMP scaler's own check, run with
    a scale of exactly 1, with which its kernels write every value back unchanged. Unlike a norm, it cannot overflow
    to a false positive on large finite values.
    """
    groups: Dict[Tuple[torch.device, torch.dtype], List[torch.Tensor]] = defaultdict(list)
    for tensor in tensors:
        groups[(tensor.device, tensor.dtype)].append(tensor)
    flags = []
    for (device, _), group in groups.items():
        found = torch.zeros((), dtype=torch.float32, device=device)
        torch._amp_foreach_non_finite_check_and_unscale_(group, found, torch.ones((), device=device))
        flags.append(found)
    if not flags:
        return torch.zeros(())
    if len(flags) == 1:
        return flags[0]
    return torch.stack([flag.to(flags[0].device) for flag in flags]).amax()


class StepPreHooks:
    """A callback on every torch optimizer of a run, called with that optimizer right before each of its steps.

    mmengine's ``OptimWrapper.update_params`` runs backward, step and zero_grad in one call, so no Runner hook point
    sees the gradients; a torch step pre-hook does: after backward (and gradient accumulation), after an AMP scaler
    has unscaled them, and not at all on an overflow step the scaler skips.
    """

    def __init__(self, callback: Callable[[torch.optim.Optimizer], None]) -> None:
        self._callback = callback
        self._handles: list = []

    def register(self, runner) -> None:
        for optimizer in torch_optimizers(runner.optim_wrapper):
            self._handles.append(optimizer.register_step_pre_hook(self._on_step))

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _on_step(self, optimizer, args, kwargs) -> None:
        self._callback(optimizer)
