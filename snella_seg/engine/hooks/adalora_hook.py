"""``AdaLoRAHook``: AdaLoRA's rank allocation at every optimizer step, and its state across resumes."""
import math
from fractions import Fraction
from typing import Any, Dict, List, Optional

import torch
from mmengine.hooks import Hook
from mmengine.runner import Runner
from mmseg.registry import HOOKS

from ...methods.peft_methods import peft_tuner_of
from .hook_utils import torch_optimizers, unwrap_model

CHECKPOINT_KEY = 'adalora_allocator'
IMPORTANCE_STATES = ('ipt', 'exp_avg_ipt', 'exp_avg_unc')


def rescale_schedule(config: Any, total_steps: int) -> None:
    """Scale an ``AdaLoraConfig``'s ``tinit``, ``tfinal`` and ``deltaT`` with its ``total_step`` to ``total_steps``.

    The phases keep their fractions of the schedule (rounded down, as SNELLA's fractional warm-ups are) and the
    budget is reallocated as often relative to the schedule, at least every iteration.

    Args:
        config: The tuner's ``AdaLoraConfig``, changed in place (peft's allocator reads it at every step).
        total_steps: The new length of the schedule in iterations.
    """
    scale = Fraction(total_steps, config.total_step)
    config.tinit = math.floor(config.tinit * scale)
    config.tfinal = math.floor(config.tfinal * scale)
    config.deltaT = max(1, math.floor(config.deltaT * scale))
    config.total_step = total_steps


@HOOKS.register_module()
class AdaLoRAHook(Hook):
    """Call peft's ``update_and_allocate`` right after each optimizer step, with the schedule's step count.

    peft asks for the call after ``optimizer.step()`` and before ``zero_grad()``, when the gradients its importance
    scores read are still there; mmengine's ``OptimWrapper.update_params`` does both in one call, so the hook is a
    torch step post-hook on the optimizer, not an ``after_train_iter``. The step count is the Runner's iteration.

    peft's schedule (``total_step``, ``tinit``, ``tfinal``, ``deltaT`` of ``AdaLoraConfig``) is fixed in the config,
    so a schedule shortened with ``--cfg-options train_cfg.max_iters=N`` would end before AdaLoRA prunes a single
    rank. With ``follow_max_iters`` (default) the hook rescales those four to the Runner's ``max_iters``, keeping
    their fractions of the schedule, as SNELLA's allocator follows ``max_iters``. The allocator's importance scores
    and the rank pattern are saved in checkpoints and restored on resume, so a resumed run masks exactly the ranks
    the uninterrupted run masks.

    Args:
        follow_max_iters: Rescale peft's schedule to the Runner's ``max_iters``; False keeps the configured one.
    """

    priority = 'NORMAL'

    def __init__(self, follow_max_iters: bool = True) -> None:
        self.follow_max_iters = follow_max_iters
        self._handles: List[Any] = []
        self._tuner: Optional[torch.nn.Module] = None

    def before_train(self, runner: Runner) -> None:
        """Find the AdaLoRA tuner of the model's backbone and hook it to the optimizer steps.

        Args:
            runner: The Runner.

        Raises:
            ValueError: When the model's backbone was not adapted with AdaLoRA.
        """
        self._tuner = self._tuner_of(runner)
        if self.follow_max_iters:
            config = self._tuner.peft_config[self._tuner.rankallocator.adapter_name]
            if config.total_step != runner.max_iters:
                configured = (config.total_step, config.tinit, config.tfinal, config.deltaT)
                rescale_schedule(config, runner.max_iters)
                runner.logger.info(
                    f'AdaLoRAHook: AdaLoraConfig total_step, tinit, tfinal, deltaT {configured} rescaled to the '
                    f"Runner's max_iters: {(config.total_step, config.tinit, config.tfinal, config.deltaT)} "
                    '(AdaLoRAHook(follow_max_iters=False) keeps the configured schedule)')
        for optimizer in torch_optimizers(runner.optim_wrapper):
            self._handles.append(optimizer.register_step_post_hook(
                lambda *_: self._tuner.update_and_allocate(runner.iter)))

    def after_train(self, runner: Runner) -> None:
        """Remove the step hooks.

        Args:
            runner: The Runner.
        """
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def before_save_checkpoint(self, runner: Runner, checkpoint: dict) -> None:
        """Save the allocator's importance scores and the rank pattern.

        Args:
            runner: The Runner.
            checkpoint: The checkpoint being saved; gains ``CHECKPOINT_KEY``.
        """
        tuner = self._tuner or self._tuner_of(runner)
        allocator = tuner.rankallocator
        checkpoint[CHECKPOINT_KEY] = dict(
            {name: dict(getattr(allocator, name)) for name in IMPORTANCE_STATES},
            rank_pattern=tuner.peft_config[allocator.adapter_name].rank_pattern)

    def after_load_checkpoint(self, runner: Runner, checkpoint: dict) -> None:
        """Restore the allocator's state on resume (``load_from`` starts a new allocation).

        Args:
            runner: The Runner.
            checkpoint: The loaded checkpoint.
        """
        state: Optional[Dict[str, Any]] = checkpoint.get(CHECKPOINT_KEY)
        if state is None or not getattr(runner, '_resume', False):
            return
        tuner = self._tuner_of(runner)
        allocator = tuner.rankallocator
        for name in IMPORTANCE_STATES:
            setattr(allocator, name, dict(state[name]))
        tuner.peft_config[allocator.adapter_name].rank_pattern = state['rank_pattern']

    @staticmethod
    def _tuner_of(runner: Runner) -> torch.nn.Module:
        backbone = unwrap_model(runner).backbone
        tuner = peft_tuner_of(getattr(backbone, 'backbone', backbone))
        if tuner is None:
            raise ValueError('AdaLoRAHook needs a backbone adapted with AdaLoRA: model.backbone=dict('
                             "type='PEFTBackbone', method=dict(type='peft', config=dict(type='AdaLoraConfig', ...)))")
        return tuner
