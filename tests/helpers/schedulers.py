"""Stepping parameter schedulers as the Runner does, without one."""
from typing import List, Sequence

import torch


def learning_rates(optimizer: torch.optim.Optimizer, schedulers: Sequence, steps: int) -> List[List[float]]:
    """The lr of every group at each iteration, stepping as mmengine's ParamSchedulerHook does."""
    rates = []
    for _ in range(steps):
        rates.append([group['lr'] for group in optimizer.param_groups])
        optimizer.step()
        for scheduler in schedulers:
            scheduler.step()
    return rates
