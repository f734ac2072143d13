"""Stop a run loudly when its loss diverges, before the diverged step is applied or saved."""
import torch
from mmengine.hooks import Hook
from mmengine.hooks.hook import DATA_BATCH
from mmengine.runner import Runner
from mmseg.registry import HOOKS

from .hook_utils import StepPreHooks, non_finite_flag


@HOOKS.register_module()
class FiniteTrainingHook(Hook):
    """Raise, naming the iteration, when an optimizer step is about to apply non-finite gradients.

    It runs as a step pre-hook of the torch optimizer, so under fp16 loss scaling the overflow steps that the
    scaler skips never reach it. Raising before ``after_train_iter`` means the CheckpointHook never saves the
    corrupted state: the last good checkpoint stays as it was.
    """

    priority = 'VERY_HIGH'

    def __init__(self) -> None:
        self._iteration = 0
        self._step_pre_hooks = StepPreHooks(self._check_gradients)

    def before_train(self, runner: Runner) -> None:
        """Check the gradients right before every optimizer step of the run."""
        self._step_pre_hooks.register(runner)

    def before_train_iter(self, runner: Runner, batch_idx: int, data_batch: DATA_BATCH = None) -> None:
        """Note the iteration, which the step pre-hook cannot see, for its error message."""
        self._iteration = runner.iter + 1

    def _check_gradients(self, optimizer: torch.optim.Optimizer) -> None:
        """Stop the run before ``optimizer`` applies non-finite gradients.

        Raises:
            FloatingPointError: If any gradient holds NaN or infinity, naming the iteration.
        """
        grads = [p.grad for group in optimizer.param_groups for p in group['params'] if p.grad is not None]
        if grads and bool(non_finite_flag(grads)):  # a few operations whatever the number of tensors; one sync
            raise FloatingPointError(
                f'non-finite gradients at iteration {self._iteration} (loss diverged): training stopped '
                'before this step was applied or saved; the last checkpoint is intact. Lower the learning '
                'rate, enable gradient clipping (optim_wrapper.clip_grad), or use --amp with bf16.')

    def after_train(self, runner: Runner) -> None:
        """Unhook from the optimizers, which may outlive the run."""
        self._step_pre_hooks.remove()
