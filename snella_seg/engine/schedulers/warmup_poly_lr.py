"""A learning-rate schedule that follows ``train_cfg.max_iters``, so a shortened run still warms up and decays.

mmengine's ``LinearLR`` + ``PolyLR`` pair pins the warm-up to absolute iterations: with
``--cfg-options train_cfg.max_iters=60`` a 1500-iteration warm-up never finishes, the learning rate stays near
``start_factor * lr`` for the whole run and the decay never starts.
"""
from typing import List, Union

from mmengine.logging import print_log
from mmengine.optim import OptimWrapper
from mmengine.optim.scheduler.lr_scheduler import LRSchedulerMixin
from mmengine.optim.scheduler.param_scheduler import INF, _ParamScheduler
from mmseg.registry import PARAM_SCHEDULERS
from torch.optim import Optimizer

from ...snella.allocator import steps_of


@PARAM_SCHEDULERS.register_module()
class WarmupPolyLR(LRSchedulerMixin, _ParamScheduler):
    """Linear warm-up from ``start_factor * lr`` to ``lr``, then polynomial decay to ``eta_min`` at ``end``.

    ``warmup`` is iterations (``int``) or a fraction of ``end - begin`` (``float`` in [0, 1), rounded down).
    Leave ``end`` out of the config: the Runner fills it with ``train_cfg.max_iters``, so the whole schedule
    scales with it. The values equal mmengine's ``LinearLR(begin, begin + W)`` followed by
    ``PolyLR(begin + W, end)`` with W the warm-up iterations (computed in closed form from each group's initial
    lr, so ``lr_mult`` groups keep their ratio).

    Args:
        optimizer: The wrapped optimizer; the Runner passes it.
        warmup: Length of the linear warm-up: an ``int`` counts iterations (epochs with ``by_epoch``), a
            ``float`` in [0, 1) is a fraction of ``end - begin`` (0.009375 of 160k is 1500, the shipped
            schedules' value), so a shortened run keeps the same share of warm-up. Must leave at least one step
            to decay over. Default 0 (no warm-up).
        start_factor: Learning rate at the first step as a fraction of the base lr, in [0, 1]. Default 1e-6
            (mmseg's ``LinearLR`` start in its ViT configs).
        power: Exponent of the poly decay: ``lr = (base - eta_min) * (1 - progress) ** power + eta_min``. Default
            1.0 (linear decay), mmseg's ViT setting.
        eta_min: Learning rate reached at ``end``. Default 0.0.
        begin: First step of the schedule. Default 0.
        end: Step at which the decay ends. Leave it out of configs: the Runner sets it to
            ``train_cfg.max_iters``; building by hand needs it (the INF default is refused).
        last_step: Index of the last step taken, for resuming by hand; -1 (default) starts fresh. The Runner's
            ``--resume`` restores it from the checkpoint itself.
        by_epoch: Count ``warmup``, ``begin`` and ``end`` in epochs instead of iterations. Default False, as in
            the shipped iteration-based schedules.
        verbose: Print the learning rate at every update (mmengine's option). Default False.

    Raises:
        ValueError: If ``end`` is not given (built by hand), ``end <= begin``, ``start_factor`` is outside [0, 1],
            or the warm-up leaves no step to decay over.
    """

    def __init__(self, optimizer: Union[Optimizer, OptimWrapper], warmup: Union[int, float] = 0,
                 start_factor: float = 1e-6, power: float = 1.0, eta_min: float = 0.0, begin: int = 0, end: int = INF,
                 last_step: int = -1, by_epoch: bool = False, verbose: bool = False) -> None:
        if end >= INF:
            raise ValueError('WarmupPolyLR needs the schedule length: leave end out of the config and the Runner '
                             'sets it to train_cfg.max_iters, or pass end explicitly when building it by hand')
        span = end - begin
        if span < 1:
            raise ValueError(f'WarmupPolyLR needs end > begin, got begin={begin}, end={end}')
        if not 0.0 <= start_factor <= 1.0:
            raise ValueError(f'start_factor must be in [0, 1], got {start_factor}')
        self.warmup_steps = steps_of('warmup', warmup, span)
        if self.warmup_steps >= span:
            raise ValueError(f'a warm-up of {self.warmup_steps} iterations leaves nothing of a {span}-iteration '
                             'schedule to decay over: give warmup as a fraction of the schedule (e.g. 0.01)')
        self.start_factor, self.power, self.eta_min = start_factor, power, eta_min
        super().__init__(optimizer, begin=begin, end=end, last_step=last_step, by_epoch=by_epoch, verbose=verbose)
        print_log(f'WarmupPolyLR: linear warm-up over {self.warmup_steps} of {span} '
                  f'{"epochs" if by_epoch else "iterations"}, then poly decay (power {power}) to {eta_min}',
                  logger='current')

    def _get_value(self) -> List[float]:
        """Return each group's learning rate at ``last_step``, in closed form from its initial lr."""
        step, warmup = self.last_step, self.warmup_steps
        if step < warmup:
            progress = step / (warmup - 1) if warmup > 1 else 0.0
            factor = self.start_factor + (1.0 - self.start_factor) * progress
            return [base * factor for base in self.base_values]
        decay_steps = self.end - self.begin - warmup - 1  # PolyLR's total_iters
        progress = min(step - warmup, decay_steps) / decay_steps if decay_steps > 0 else 0.0
        return [(base - self.eta_min) * (1.0 - progress) ** self.power + self.eta_min for base in self.base_values]
