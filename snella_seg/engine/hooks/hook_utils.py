"""What SNELLA's hooks need from mmengine's Runner.

The bare model, the torch optimizers, the EMA copies, and callbacks that run right before each optimizer step.
"""
from collections import defaultdict
from typing import Callable, Dict, List, Sequence, Tuple, Union

import torch
from mmengine.model import is_model_wrapper
from mmengine.optim import OptimWrapper, OptimWrapperDict
from mmengine.runner import Runner


def unwrap_model(runner: Runner) -> torch.nn.Module:
    """Return the Runner's model without its DDP (or other mmengine) wrapper.

    Args:
        runner: The Runner.

    Returns:
        The bare model, whose parameter names carry no ``module.``.
    """
    return runner.model.module if is_model_wrapper(runner.model) else runner.model


def torch_optimizers(optim_wrapper: Union[OptimWrapper, OptimWrapperDict]) -> List[torch.optim.Optimizer]:
    """Return the torch optimizers behind an optimizer wrapper, where step pre-hooks can be registered.

    Args:
        optim_wrapper: The Runner's ``OptimWrapper`` or ``OptimWrapperDict``.

    Returns:
        Its torch optimizers, one per wrapper.
    """
    wrappers = optim_wrapper.values() if hasattr(optim_wrapper, 'optim_wrappers') else [optim_wrapper]
    return [w.optimizer for w in wrappers]


def ema_models(runner: Runner) -> List[torch.nn.Module]:
    """Return the averaged copies that hooks such as mmengine's EMAHook keep of the model.

    Args:
        runner: The Runner whose hooks are searched.

    Returns:
        The EMA models, without their averaging wrapper; empty when no hook keeps one.
    """
    models = (getattr(getattr(hook, 'ema_model', None), 'module', None) for hook in runner.hooks)
    return [m for m in models if m is not None]


def non_finite_flag(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Flag non-finite values in ``tensors`` without a host sync.

    One operation per device and dtype (not one per tensor): the AMP scaler's own check, run with a scale of
    exactly 1, with which its kernels write every value back unchanged. Unlike a norm, it cannot overflow to a false
    positive on large finite values.

    Args:
        tensors: The tensors to check, on any devices and dtypes.

    Returns:
        A float32 scalar on the first tensor's device (the CPU when there are none): 1 when any element is NaN or
        infinite, else 0.
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

    Args:
        callback: Called with the optimizer about to step.
    """

    def __init__(self, callback: Callable[[torch.optim.Optimizer], None]) -> None:
        self._callback = callback
        self._handles: list = []

    def register(self, runner: Runner) -> None:
        """Hook the callback to every torch optimizer of ``runner`` (``torch_optimizers``).

        Args:
            runner: The Runner, once its optimizer wrapper is built.
        """
        for optimizer in torch_optimizers(runner.optim_wrapper):
            self._handles.append(optimizer.register_step_pre_hook(self._on_step))

    def remove(self) -> None:
        """Unhook from every optimizer, which may outlive the run."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _on_step(self, optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
        """Call the callback: torch's step pre-hook signature, whose step arguments it does not need."""
        self._callback(optimizer)
