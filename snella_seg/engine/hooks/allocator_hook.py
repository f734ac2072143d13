"""Drive SNELLA's bi-level allocator from the mmengine Runner.

The importance update runs as a *step pre-hook of the torch optimizer* (``hook_utils.StepPreHooks`` says why): it
sees the unscaled gradients after backward and gradient accumulation, and never an overflow step that the AMP scaler
skips. The reallocation follows the Runner's iteration in ``after_train_iter``.
"""
import json
import os
import os.path as osp
from numbers import Integral
from typing import Dict, List, Optional, Tuple, Union

import torch
from mmengine.dist import all_gather, get_world_size, is_main_process
from mmengine.hooks import Hook
from mmengine.hooks.hook import DATA_BATCH
from mmengine.runner import Runner
from mmseg.registry import HOOKS

from ...snella import BiLevelAllocator, SparseKernelDelta
from ...snella.layer import set_sparsities
from .allocation_plot import plot_allocation
from .hook_utils import StepPreHooks, ema_models, unwrap_model

ALLOCATION_JSON = 'snella_allocation.json'
ALLOCATION_PLOT = 'snella_allocation.png'

CHECKPOINT_KEY = 'snella_allocator'
MAX_SNAPSHOTS = 200
# The cross-rank fingerprint: this many weighted sums for each of parameters, importance and sparsity.
FINGERPRINT_GROUPS = ('parameters', 'importance', 'sparsity')
FINGERPRINT_PROJECTIONS = 4


@HOOKS.register_module()
class SNELLAAllocatorHook(Hook):
    """Importance after every optimizer step, reallocation on the schedule, state in every checkpoint.

    ``total_steps`` defaults to the Runner's ``max_iters``. Warm-ups are iterations (``int``) or fractions of
    ``total_steps`` (``float`` in [0, 1), e.g. ``final_warmup=0.25``), so ``--cfg-options train_cfg.max_iters=N``
    scales them; ``mask_interval`` counts iterations and is shortened when a short run would otherwise reallocate
    fewer than ten times while the budget shrinks. The allocation plot and JSON are rewritten at every checkpoint
    and at the end, so an interrupted run keeps them. The run fails loudly if the allocator never stepped or
    learned nothing, rather than silently training a fixed sparsity.

    The budget schedule and reallocation are ``BiLevelAllocator``'s (``snella/allocator.py``); docs/method.md,
    section 3, states them.

    Args:
        target_ratio: Final overall sparsity in [0, 1): the size-weighted fraction of all update entries that
            are zero once the budget has shrunk (0.7 keeps 30%). Required: it depends on the task (the authors'
            FGVC values range from 0.16 to 0.93); the shipped configs use 0.7.
        total_steps: Iterations the schedule spans. None (default) takes the Runner's ``max_iters``, so the
            schedule follows ``--cfg-options train_cfg.max_iters=N``.
        init_warmup: Iterations at the start during which the budget stays at its initial value and nothing is
            reallocated, so importance can settle first: an ``int`` counts iterations, a ``float`` in [0, 1) is a
            fraction of ``total_steps`` (0.025 of 160k is 4000). Default 0 (the authors' FGVC setting).
        final_warmup: Iterations at the end spent at the final budget, reallocating every iteration, given like
            ``init_warmup``. Default 0; the shipped configs use 0.25.
        mask_interval: Iterations between reallocations while the budget shrinks. Lowered (with a log line) when
            the shrinking phase would otherwise see fewer than 10 reallocations. Default 1, the authors' value
            (which their code counts in epochs); the shipped configs use 100: the budget moves little in 100 of
            160k iterations, and each reallocation also runs the cross-rank check in distributed runs.
        beta1: EMA factor of the sensitivity (mean of ``|P * grad(P)|``), in [0, 1). Default 0.85, the
            authors' value.
        beta2: EMA factor of the uncertainty (mean deviation of ``|P * grad(P)|`` from the sensitivity), in
            [0, 1). Default 0.85, the authors' value.
        init_sparsity: Every update's sparsity in [0, 1) before the first reallocation; it sets the initial
            budget V0. Default 0.0 (dense start, the authors' value).
        log_interval: Minimum iterations between recorded allocation snapshots (the scalars logged to the
            visualizer backends, the history in the JSON and the plot). Default 50, mmseg's logging interval.
        plot: Write ``snella_allocation.png`` (and always ``snella_allocation.json``) to the work dir at every
            checkpoint and at the end. Default True.
        check_interval: In distributed runs, reallocations between two checks that every rank holds the same
            parameters, importance and allocation (a fingerprint of a dozen numbers computed on the device, one
            all_gather). The first reallocation of a run and the last of the schedule are always checked. Default
            100: in the final warm-up every iteration reallocates.
    """

    # After mmengine's EMAHook (NORMAL), so the EMA model receives the allocation of the same iteration.
    priority = 'BELOW_NORMAL'

    def __init__(self, target_ratio: float, total_steps: Optional[int] = None, init_warmup: Union[int, float] = 0,
                 final_warmup: Union[int, float] = 0, mask_interval: int = 1, beta1: float = 0.85, beta2: float = 0.85,
                 init_sparsity: float = 0.0, log_interval: int = 50, plot: bool = True,
                 check_interval: int = 100) -> None:
        if isinstance(check_interval, bool) or not isinstance(check_interval, Integral) or check_interval < 1:
            raise ValueError(f'check_interval must be an int >= 1 (reallocations between cross-rank checks), got '
                             f'{check_interval!r}')
        self.allocator_args = dict(target_ratio=target_ratio, init_warmup=init_warmup, final_warmup=final_warmup,
                                   mask_interval=mask_interval, beta1=beta1, beta2=beta2,
                                   init_sparsity=init_sparsity)
        self.total_steps = total_steps
        self.log_interval = log_interval
        self.plot = plot
        self.check_interval = int(check_interval)
        self.allocator: Optional[BiLevelAllocator] = None
        self.history: List[Dict] = []
        self._pending_state: Optional[dict] = None
        self._step_pre_hooks = StepPreHooks(self._update_importance)
        self._fingerprint_weights: Dict[Tuple[int, torch.device], torch.Tensor] = {}
        self.rank_checks = 0

    # --------------------------------------------------------------------------------------------- set-up
    def after_load_checkpoint(self, runner: Runner, checkpoint: dict) -> None:
        """Keep a resumed checkpoint's allocator state for ``before_train``, which builds the allocator.

        Only a resume continues the allocation; ``load_from`` starts a new run (maybe with other targets) from the
        weights, and its schedule restarts at iteration 0.
        """
        if CHECKPOINT_KEY in checkpoint and getattr(runner, '_resume', False):
            self._pending_state = checkpoint[CHECKPOINT_KEY]

    def before_train(self, runner: Runner) -> None:
        """Build the allocator over the model's SNELLA updates and hook it to the optimizer steps."""
        model = unwrap_model(runner)
        total = self.total_steps or runner.max_iters
        self.allocator = BiLevelAllocator(model, total_steps=total, **self.allocator_args)
        if self._pending_state is not None:
            state = dict(self._pending_state)
            self.history = state.pop('history', [])
            self.allocator.load_state_dict(state)
            self._pending_state = None
        self._step_pre_hooks.register(runner)
        self._give_ema_models_the_frozen_weights(runner)
        alloc = self.allocator
        runner.logger.info(f'SNELLA allocator: {len(alloc.layers)} updates, target ratio {alloc.target_ratio}, '
                           f'{total} steps, warm-ups {alloc.init_warmup} + {alloc.final_warmup} iterations, '
                           f'reallocating every {alloc.mask_interval} iterations while the budget shrinks')
        if alloc.mask_interval != alloc.requested_mask_interval:
            runner.logger.info(f'SNELLA mask_interval {alloc.requested_mask_interval} shortened to '
                               f'{alloc.mask_interval}: the budget shrinks over only '
                               f'{total - alloc.init_warmup - alloc.final_warmup} iterations')

    def _update_importance(self, optimizer: torch.optim.Optimizer) -> None:
        """Update the importance EMAs from the gradients ``optimizer`` is about to apply."""
        self.allocator.update_importance()

    # ------------------------------------------------------------------------------------------- training
    def after_train_iter(self, runner: Runner, batch_idx: int, data_batch: DATA_BATCH = None,
                         outputs: Optional[dict] = None) -> None:
        """Reallocate when the schedule says so, then pass the allocation on to EMA models, checks and logs."""
        step = runner.iter + 1
        if not self.allocator.step(step):
            return
        self._sync_ema_models(runner)
        if get_world_size() > 1 and self._rank_check_due(runner, step):
            self._check_ranks_agree(runner, step)
        last_recorded = self.history[-1]['step'] if self.history else None
        if last_recorded is None or step - last_recorded >= self.log_interval or step == self.allocator.total_steps:
            self._record(runner, step)

    def _sync_ema_models(self, runner: Runner) -> None:
        """Give EMA copies the live allocation: they must never evaluate with an average of past sparsities.

        The authors' code never passed its thresholds to the EMA model; EMAHook with ``update_buffers=True`` would
        average them.
        """
        for ema_model in ema_models(runner):
            # set_sparsities, not a buffer copy: it keeps the host copies that the EMA model's forward reads
            ema_updates = {name: m for name, m in ema_model.named_modules() if isinstance(m, SparseKernelDelta)}
            shared = [name for name in self.allocator.layers if name in ema_updates]  # the unwrapped model's names
            set_sparsities([ema_updates[name] for name in shared],
                           [self.allocator.layers[name].sparsity_value for name in shared])

    @staticmethod
    @torch.no_grad()
    def _give_ema_models_the_frozen_weights(runner: Runner) -> None:
        """Copy the frozen base weights into the EMA models.

        EMAHook copies the model before its weights load, and a delta-only state dict (what EMAHook averages with
        ``update_buffers=True``, and what its checkpoints hold) leaves the frozen base out: without this copy the
        EMA model would evaluate and save updates on a randomly initialised base.
        """
        model = unwrap_model(runner)
        frozen = {name: p for name, p in model.named_parameters() if not p.requires_grad}
        for ema_model in ema_models(runner):
            for name, p in ema_model.named_parameters():
                if name in frozen:
                    p.copy_(frozen[name])

    def _rank_check_due(self, runner: Runner, step: int) -> bool:
        """Return whether to check the ranks: first reallocation here, every ``check_interval``-th, and the last."""
        alloc = self.allocator
        return (self.rank_checks == 0 or alloc.reallocations % self.check_interval == 0
                or step == alloc.last_reallocation_step() or step >= runner.max_iters)

    def _weighted_sums(self, values: torch.Tensor) -> torch.Tensor:
        """Project ``values`` (float64) onto ``FINGERPRINT_PROJECTIONS`` fixed weightings in [0.5, 1.5).

        The weights are the same on every rank: a change in any one value moves every sum, and opposite changes in
        two values do not cancel.

        Returns:
            The ``FINGERPRINT_PROJECTIONS`` weighted sums, on ``values``' device.
        """
        key = (len(values), values.device)
        if key not in self._fingerprint_weights:
            generator = torch.Generator().manual_seed(len(values))
            weights = torch.rand(len(values), FINGERPRINT_PROJECTIONS, generator=generator, dtype=torch.float64)
            self._fingerprint_weights[key] = (weights + 0.5).to(values.device)
        return values @ self._fingerprint_weights[key]

    @torch.no_grad()
    def _fingerprint(self, runner: Runner) -> torch.Tensor:
        """``FINGERPRINT_PROJECTIONS`` numbers (float64) for each of ``FINGERPRINT_GROUPS``, on the device.

        Parameters: per tensor the L1 and L2 norms, accumulated in float64 without a float64 copy (one reduction
        over all trainable tensors each), then weighted sums. Importance: weighted sums of the L1 norms of the
        sensitivity and uncertainty EMAs. Sparsity: weighted sums of the per-update sparsities, from the host.

        Returns:
            The fingerprint, groups in ``FINGERPRINT_GROUPS`` order, on the parameters' device.
        """
        params = [p for p in unwrap_model(runner).parameters() if p.requires_grad]
        device = params[0].device
        per_tensor = [*torch._foreach_norm(params, 1, dtype=torch.float64),
                      *torch._foreach_norm(params, 2, dtype=torch.float64)]
        alloc = self.allocator
        emas = [t for ts in (*alloc.sensitivity.values(), *alloc.uncertainty.values()) for t in ts]
        importance = (self._weighted_sums(torch.stack(torch._foreach_norm(emas, 1, dtype=torch.float64)))
                      if emas else torch.zeros(FINGERPRINT_PROJECTIONS, dtype=torch.float64, device=device))
        sparsity = self._weighted_sums(torch.tensor(list(alloc.sparsities().values()), dtype=torch.float64))
        return torch.cat([self._weighted_sums(torch.stack(per_tensor)), importance.to(device), sparsity.to(device)])

    def _check_ranks_agree(self, runner: Runner, step: int) -> None:
        """Check that every rank holds the same parameters, importance and allocation.

        A silent disagreement would train different masks on different GPUs. One all_gather of ``_fingerprint``
        and one device-to-host read of which ranks differ from rank 0.

        Raises:
            RuntimeError: If a rank's fingerprint differs from rank 0's, naming the group and the ranks.
        """
        mine = self._fingerprint(runner)
        gathered = torch.stack(all_gather(mine))
        reference = gathered[0]
        same = (gathered == reference) | (gathered.isnan() & reference.isnan())
        differs = ~same.view(len(gathered), len(FINGERPRINT_GROUPS), FINGERPRINT_PROJECTIONS).all(dim=2)
        for group, ranks_differ in zip(FINGERPRINT_GROUPS, differs.T.tolist()):  # the one device sync
            ranks = [rank for rank, differ in enumerate(ranks_differ) if differ]
            if ranks:
                raise RuntimeError(
                    f'SNELLA {group} diverged between ranks at iteration {step}: ranks differing from rank 0: '
                    f'{", ".join(map(str, ranks))}. Every rank must run the same config; gradients must be '
                    'synchronised (DDP) before the optimizer step.')
        self.rank_checks += 1

    def _record(self, runner: Runner, step: int) -> None:
        """Snapshot the allocation into the history (thinned to ``MAX_SNAPSHOTS``) and the visualizer backends."""
        sparsities = self.allocator.sparsities()
        self.history.append({'step': step, 'budget': self.allocator.budget, 'sparsity': sparsities})
        if len(self.history) > MAX_SNAPSHOTS:  # keep the first and every other later snapshot
            self.history = self.history[:1] + self.history[2::2] + self.history[-1:]
        runner.message_hub.update_scalar('train/snella_sparsity', self.allocator.overall_sparsity())
        runner.message_hub.update_scalar('train/snella_budget', self.allocator.budget)
        runner.visualizer.add_scalars({f'snella_sparsity/{n}': v for n, v in sparsities.items()}, step=step)

    # ---------------------------------------------------------------------------------------- checkpoints
    def before_save_checkpoint(self, runner: Runner, checkpoint: dict) -> None:
        """Save the allocator's state and history, so ``--resume`` continues the schedule; rewrite JSON and plot."""
        if self.allocator is not None:
            checkpoint[CHECKPOINT_KEY] = dict(self.allocator.state_dict(), history=self.history)
            if is_main_process():  # mmengine saves on the main process only; guarded for direct calls
                self._write_outputs(runner, finished=False)

    def after_train(self, runner: Runner) -> None:
        """Fail a run whose allocator never worked, else log the summary and write the final JSON and plot.

        Raises:
            RuntimeError: If the allocator never reallocated after its warm-up, never saw a gradient, or learned
                zero importance for every layer: such a run trained a fixed sparsity without saying so.
        """
        self._step_pre_hooks.remove()
        alloc = self.allocator
        if alloc.last_step > 0 and alloc.reallocations == 0 and alloc.last_step > alloc.init_warmup:
            raise RuntimeError('the SNELLA allocator never reallocated although training passed its warm-up: '
                               'check mask_interval against the number of iterations')
        if alloc.importance_updates == 0 and alloc.last_step > 0:
            raise RuntimeError('the SNELLA allocator never saw a gradient: no optimizer step reached it (is the '
                               'optimizer built by SNELLAOptimWrapperConstructor and the model adapted?)')
        if alloc.importance_updates > 0 and all(v == 0 for v in alloc.scores().values()):
            raise RuntimeError('SNELLA importance stayed zero for every layer: the updates received no gradient '
                               '(frozen by mistake, or detached from the loss)')
        if is_main_process():
            runner.logger.info('\n' + alloc.summary())
            self._write_outputs(runner, finished=True)

    def _write_outputs(self, runner: Runner, finished: bool) -> None:
        """Write the allocation JSON (and plot) of the current step.

        The JSON's ``final`` is the latest allocation, and ``finished`` says whether training completed. Each file
        is replaced whole, so a crash mid-write leaves the previous version.
        """
        final = {'step': self.allocator.last_step, 'budget': self.allocator.budget,
                 'sparsity': self.allocator.sparsities(),
                 'size': {n: m.numel for n, m in self.allocator.layers.items()}}
        json_path = osp.join(runner.work_dir, ALLOCATION_JSON)
        with open(json_path + '.tmp', 'w') as f:
            json.dump({'finished': finished, 'final': final, 'history': self.history}, f, indent=1)
        os.replace(json_path + '.tmp', json_path)
        if self.plot:
            plot_path = osp.join(runner.work_dir, ALLOCATION_PLOT)
            os.replace(plot_allocation(self.history, final, plot_path + '.tmp'), plot_path)
            if finished:
                runner.logger.info(f'SNELLA allocation plot written to {plot_path}')

