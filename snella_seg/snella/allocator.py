"""Inter-layer competition: a shrinking budget of nonzero update entries, shared out by importance.

docs/method.md, section 3. Importance is a sensitivity EMA times an uncertainty EMA of ``|P * grad(P)|`` per factor
tensor; a cubic schedule shrinks the budget from ``V0`` to ``VT``; each reallocation gives every update a share
of the budget proportional to its score and sets its sparsity accordingly.

Warm-ups are given either as iteration counts (``int``) or as fractions of the schedule (``float`` in [0, 1)),
so a config written for 160k iterations still works when ``max_iters`` is overridden for a short run.
"""
import math
from fractions import Fraction
from numbers import Integral, Real
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .layer import SparseKernelDelta, check_fraction, set_sparsities

# The shrinking phase is reallocated at least this often, whatever mask_interval asks, so short runs still compete.
MIN_SHRINK_REALLOCATIONS = 10
Steps = Union[int, float]


def steps_of(name: str, value: Steps, total_steps: int) -> int:
    """Iterations meant by ``value``, a count of iterations or a fraction of the schedule.

    A float of 1 or more (``1.0``, ``4000.0``) is refused as ambiguous rather than guessed at.

    Args:
        name: The option's name, for error messages.
        value: An ``int`` counts iterations; a ``float`` in [0, 1) is a fraction of ``total_steps``, rounded down
            (read as the decimal written, so 0.025 of 160000 is exactly 4000).
        total_steps: Length of the schedule in iterations.

    Returns:
        The number of iterations.

    Raises:
        TypeError: ``value`` is neither an int nor a float.
        ValueError: ``value`` is negative, not finite, or a float of 1 or more.
    """
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f'{name} must be an int (iterations) or a float in [0, 1) (fraction of the schedule), '
                        f'got {value!r}')
    if not math.isfinite(value) or value < 0:
        raise ValueError(f'{name} must be >= 0, got {value!r}')
    if isinstance(value, Integral):
        return int(value)
    if value >= 1.0:
        raise ValueError(f'{name}={value!r} is ambiguous: write an int for a number of iterations '
                         f'({name}={int(value)}) or a float in [0, 1) for a fraction of the schedule ({name}=0.25)')
    return math.floor(Fraction(repr(float(value))) * total_steps)


def budget_at(step: int, total_steps: int, start_budget: float, final_budget: float,
              init_warmup: int = 0, final_warmup: int = 0) -> float:
    """The cubic budget schedule: flat V0 during the initial warm-up, VT during the final one.

    Args:
        step: The current iteration, 1-based.
        total_steps: Length of the schedule in iterations.
        start_budget: V0, the budget up to the end of the initial warm-up.
        final_budget: VT, the budget of the final warm-up.
        init_warmup: Iterations of the initial warm-up.
        final_warmup: Iterations of the final warm-up.

    Returns:
        The budget (nonzero update entries) at ``step``.
    """
    if step <= init_warmup:
        return start_budget
    if step > total_steps - final_warmup:
        return final_budget
    progress = (step - init_warmup) / (total_steps - final_warmup - init_warmup)
    return final_budget + (start_budget - final_budget) * (1.0 - progress) ** 3


def split_budget(budget: int, scores: Sequence[float], capacities: Sequence[int]) -> List[int]:
    """Share ``budget`` entries proportionally to ``scores``, each share capped at its capacity.

    Floors first; any leftover (from flooring or caps) goes to the layers not yet full, proportionally to their
    scores (uniformly when they all score zero), until everything that fits is placed.

    Args:
        budget: Entries to share out.
        scores: One nonnegative score per layer.
        capacities: Entries each layer holds at most.

    Returns:
        Each layer's share, in the order of ``scores``.
    """
    count = len(scores)
    budget = min(int(budget), sum(capacities))
    total = float(sum(scores))
    weights = [s / total for s in scores] if total > 0 else [1.0 / count] * count
    shares = [min(math.floor(budget * w), c) for w, c in zip(weights, capacities)]
    leftover = budget - sum(shares)
    while leftover > 0:
        open_layers = [i for i in range(count) if shares[i] < capacities[i]]
        open_total = sum(weights[i] for i in open_layers)
        placed = 0
        for i in open_layers:
            w = weights[i] / open_total if open_total > 0 else 1.0 / len(open_layers)
            add = min(math.floor(leftover * w), capacities[i] - shares[i])
            shares[i] += add
            placed += add
        leftover -= placed
        if placed == 0:  # fewer entries left than layers: one each, highest score first
            for i in sorted(open_layers, key=lambda i: -weights[i])[:leftover]:
                shares[i] += 1
            leftover = 0
    return shares


class BiLevelAllocator:
    """Drives the per-update sparsity of every ``SparseKernelDelta`` in ``model``.

    Call ``update_importance()`` after backward and before zero_grad (with unscaled gradients), and
    ``step(iteration)`` once per optimizer step with a 1-based iteration count.

    ``init_warmup`` and ``final_warmup`` are iterations (``int``) or fractions of ``total_steps`` (``float`` in
    [0, 1), see ``steps_of``); the attributes hold the resolved iterations. ``mask_interval`` is shortened when
    the shrinking phase would otherwise see fewer than ``MIN_SHRINK_REALLOCATIONS`` reallocations;
    ``requested_mask_interval`` keeps what was asked.

    Args:
        model: The model whose ``SparseKernelDelta`` updates share the budget.
        target_ratio: The size-weighted mean sparsity reached at the end, in [0, 1).
        total_steps: Length of the schedule in iterations.
        init_warmup: Steps at the start budget before any reallocation.
        final_warmup: Steps at the final budget, reallocated at every step.
        mask_interval: Iterations between reallocations while the budget shrinks.
        beta1: EMA coefficient of the sensitivity, in [0, 1).
        beta2: EMA coefficient of the uncertainty, in [0, 1).
        init_sparsity: Every update's sparsity at the start, in [0, 1): fixes the start budget V0.

    Raises:
        ValueError: An option is out of range, or the warm-ups leave no steps to shrink the budget over.
    """

    def __init__(self, model: nn.Module, target_ratio: float, total_steps: int, init_warmup: Steps = 0,
                 final_warmup: Steps = 0, mask_interval: int = 1, beta1: float = 0.85, beta2: float = 0.85,
                 init_sparsity: float = 0.0) -> None:
        check_fraction('target_ratio', target_ratio)
        check_fraction('init_sparsity', init_sparsity)
        if isinstance(total_steps, bool) or not isinstance(total_steps, Integral) or total_steps < 1:
            raise ValueError(f'total_steps must be a positive int (iterations), got {total_steps!r}')
        if isinstance(init_warmup, float) and isinstance(final_warmup, float) and init_warmup + final_warmup >= 1:
            raise ValueError(f'init_warmup + final_warmup = {init_warmup + final_warmup} must stay below 1 (the '
                             'whole schedule): the budget needs steps to shrink over')
        resolved_init = steps_of('init_warmup', init_warmup, total_steps)
        resolved_final = steps_of('final_warmup', final_warmup, total_steps)
        if total_steps <= resolved_init + resolved_final:
            raise ValueError(f'total_steps={total_steps} must be larger than init_warmup + final_warmup = '
                             f'{resolved_init + resolved_final} iterations: the budget needs steps to shrink over. '
                             'Give the warm-ups as fractions of the schedule (e.g. init_warmup=0.025, '
                             'final_warmup=0.25) to make them follow the number of iterations')
        if isinstance(mask_interval, bool) or not isinstance(mask_interval, Integral) or mask_interval < 1:
            raise ValueError(f'mask_interval must be an int >= 1 (iterations), got {mask_interval!r}')
        for name, beta in (('beta1', beta1), ('beta2', beta2)):
            if not 0.0 <= beta < 1.0:
                raise ValueError(f'{name} must be in [0, 1), got {beta}')
        self.layers: Dict[str, SparseKernelDelta] = {
            n: m for n, m in model.named_modules() if isinstance(m, SparseKernelDelta)}
        if not self.layers:
            raise ValueError('the model has no SNELLA updates to allocate: call inject_snella (or use '
                             'SNELLABackbone) before building the allocator')
        self.target_ratio, self.total_steps = target_ratio, int(total_steps)
        self.init_warmup, self.final_warmup = resolved_init, resolved_final
        self.requested_mask_interval = int(mask_interval)
        shrink_steps = self.total_steps - resolved_init - resolved_final
        self.mask_interval = max(1, min(self.requested_mask_interval, shrink_steps // MIN_SHRINK_REALLOCATIONS))
        self.beta1, self.beta2 = beta1, beta2
        sizes = [m.numel for m in self.layers.values()]
        self.start_budget = int(round(sum((1.0 - init_sparsity) * n for n in sizes)))
        self.final_budget = int(round(sum((1.0 - target_ratio) * n for n in sizes)))
        self.budget = self.start_budget
        self.sensitivity: Dict[str, List[torch.Tensor]] = {}
        self.uncertainty: Dict[str, List[torch.Tensor]] = {}
        self._scratch: Optional[torch.Tensor] = None
        self._scratch_tensors: List[torch.Tensor] = []
        self.importance_updates = 0
        self.skipped_updates = 0
        self.reallocations = 0
        self.last_step = 0
        for layer in self.layers.values():
            layer.set_sparsity(init_sparsity)

    # ----------------------------------------------------------------------------------------- importance
    def _factor_pairs(self, layer: SparseKernelDelta) -> Tuple[nn.Parameter, nn.Parameter]:
        return layer.in_factors, layer.out_factors

    def _factors(self) -> List[nn.Parameter]:
        """Return every factor tensor in layer order, as ``sensitivity`` and ``uncertainty`` list their EMAs."""
        return [p for layer in self.layers.values() for p in self._factor_pairs(layer)]

    def _scratch_views(self, factors: List[nn.Parameter]) -> List[torch.Tensor]:
        """Return float32 views shaped like ``factors`` into one flat buffer.

        Elementwise work on all factors is then a single operation on the buffer instead of one per tensor. The views
        are kept between steps, the memory is not (``_release_scratch``): held, it would add a third copy of the
        factors to the next step's activation peak.
        """
        device = factors[0].device
        if self._scratch is None or self._scratch.device != device:
            sizes = [p.numel() for p in factors]
            self._scratch = torch.empty(sum(sizes), dtype=torch.float32, device=device)
            self._scratch_tensors = [v.view(p.shape) for v, p in zip(self._scratch.split(sizes), factors)]
        storage = self._scratch.untyped_storage()
        needed = self._scratch.numel() * self._scratch.element_size()
        if storage.nbytes() != needed:
            storage.resize_(needed)  # the views see the new memory: they address the storage, not a pointer
        return self._scratch_tensors

    def _release_scratch(self) -> None:
        if self._scratch is not None:
            self._scratch.untyped_storage().resize_(0)

    @torch.no_grad()
    def update_importance(self) -> bool:
        """Fold the current gradients into the importance EMAs.

        A fixed number of operations whatever the number of layers (batched over all factors in one flat float32
        buffer and ``torch._foreach_*`` over the EMA lists), and one host sync: the finite check.

        Returns:
            False (and nothing changed) when no factor has a gradient or any factor gradient is not finite, e.g. an
            fp16 overflow step that the optimizer also skips; True otherwise.
        """
        factors = self._factors()
        grads = [p.grad for p in factors]
        present = [i for i, g in enumerate(grads) if g is not None]
        if not present:
            return False
        current = self._scratch_views(factors)
        try:
            return self._fold_importance(factors, grads, present, current)
        finally:
            self._release_scratch()

    def _fold_importance(self, factors: List[nn.Parameter], grads: list, present: List[int],
                         current: List[torch.Tensor]) -> bool:
        # current = |P * grad(P)|, built in place: the gradients in float32 (a missing one counts as zero), checked,
        # then times P (the product commutes, so this equals P.float() * grad.float()).
        torch._foreach_copy_([current[i] for i in present], [grads[i] for i in present])
        if len(present) < len(grads):
            torch._foreach_zero_([t for i, t in enumerate(current) if grads[i] is None])
        if not bool(torch.isfinite(self._scratch).all()):  # the one device sync
            self.skipped_updates += 1
            return False
        torch._foreach_mul_(current, factors)
        self._scratch.abs_().nan_to_num_(0.0)
        for name, layer in self.layers.items():
            if name not in self.sensitivity:
                params = self._factor_pairs(layer)
                self.sensitivity[name] = [torch.zeros_like(p, dtype=torch.float32) for p in params]
                self.uncertainty[name] = [torch.zeros_like(p, dtype=torch.float32) for p in params]
        bars = [t for name in self.layers for t in self.sensitivity[name]]
        uncertainties = [t for name in self.layers for t in self.uncertainty[name]]
        torch._foreach_mul_(bars, self.beta1)
        torch._foreach_add_(bars, current, alpha=1 - self.beta1)
        torch._foreach_sub_(current, bars)  # |I - I_bar|, with the I_bar just updated, replaces I in the buffer
        self._scratch.abs_()
        torch._foreach_mul_(uncertainties, self.beta2)
        torch._foreach_add_(uncertainties, current, alpha=1 - self.beta2)
        self.importance_updates += 1
        return True

    @torch.no_grad()
    def scores(self) -> Dict[str, float]:
        """Layer score S_l = mean(I_bar * U) over its input factors plus the same over its output factors.

        All layers at once, read back in one device-to-host transfer. The sums are L1 norms (both EMAs average
        absolute values, so their product is nonnegative): equal to ``(I_bar * U).mean()`` up to float32 rounding
        of a different summation order.

        Returns:
            Qualified update name -> score; 0 for updates without importance yet.
        """
        names = [name for name in self.layers if name in self.sensitivity]
        result = dict.fromkeys(self.layers, 0.0)
        if not names:
            return result
        bars = [t for name in names for t in self.sensitivity[name]]
        uncertainties = [t for name in names for t in self.uncertainty[name]]
        means = torch._foreach_norm(torch._foreach_mul(bars, uncertainties), 1)
        torch._foreach_div_(means, [t.numel() for t in bars])
        per_layer = torch.stack(means).view(len(names), -1).sum(dim=1)
        result.update(zip(names, per_layer.tolist()))  # the one device sync
        return result

    # ------------------------------------------------------------------------------------------ schedule
    def step(self, iteration: int) -> bool:
        """Advance the budget to ``iteration`` and reallocate when the schedule says so.

        Args:
            iteration: The optimizer step just taken, 1-based.

        Returns:
            Whether it reallocated.
        """
        self.last_step = iteration
        self.budget = int(round(budget_at(iteration, self.total_steps, self.start_budget, self.final_budget,
                                          self.init_warmup, self.final_warmup)))
        if iteration <= self.init_warmup:
            return False
        in_final = iteration > self.total_steps - self.final_warmup
        if not in_final and iteration % self.mask_interval:
            return False
        self.reallocate()
        return True

    def last_reallocation_step(self) -> int:
        """The iteration of the schedule's last reallocation.

        Returns:
            The final iteration when there is a final warm-up, else the last multiple of ``mask_interval``.
        """
        if self.final_warmup > 0:
            return self.total_steps
        return self.total_steps - self.total_steps % self.mask_interval

    def reallocate(self) -> None:
        """Share the current budget out by score and set each update's sparsity."""
        names = list(self.layers)
        scores = self.scores()
        sizes = [self.layers[n].numel for n in names]
        shares = split_budget(self.budget, [scores[n] for n in names], sizes)
        set_sparsities([self.layers[n] for n in names],
                       [min(max(1.0 - share / size, 0.0), 1.0) for share, size in zip(shares, sizes)])
        self.reallocations += 1

    # ------------------------------------------------------------------------------------------- state
    def sparsities(self) -> Dict[str, float]:
        """Each update's current sparsity.

        Returns:
            Qualified update name -> sparsity.
        """
        return {n: m.sparsity_value for n, m in self.layers.items()}

    def kept_entries(self) -> int:
        """Nonzero update entries the current sparsities allow, summed over layers.

        Returns:
            The number of entries.
        """
        return sum(m.numel - round(m.sparsity_value * m.numel) for m in self.layers.values())

    def overall_sparsity(self) -> float:
        """Size-weighted mean sparsity: the quantity ``target_ratio`` asks for.

        Returns:
            The sparsity, in [0, 1].
        """
        total = sum(m.numel for m in self.layers.values())
        return 1.0 - self.kept_entries() / total

    def _emas_on_host(self) -> Tuple[Dict[str, List[torch.Tensor]], Dict[str, List[torch.Tensor]]]:
        """Return copies of ``sensitivity`` and ``uncertainty`` on the CPU, moved in one transfer, not per tensor."""
        tensors = [t for ts in (*self.sensitivity.values(), *self.uncertainty.values()) for t in ts]
        if not tensors:
            return {}, {}
        flat = torch.cat([t.detach().reshape(-1) for t in tensors]).cpu()
        copies = iter(v.view(t.shape).clone() for v, t in zip(flat.split([t.numel() for t in tensors]), tensors))
        return ({n: [next(copies) for _ in ts] for n, ts in self.sensitivity.items()},
                {n: [next(copies) for _ in ts] for n, ts in self.uncertainty.items()})

    def state_dict(self) -> dict:
        """What a checkpoint keeps of the allocator, with the EMAs on the CPU.

        Returns:
            EMAs, sparsities, budget and counters, as ``load_state_dict`` takes them.
        """
        sensitivity, uncertainty = self._emas_on_host()
        return {
            'sensitivity': sensitivity,
            'uncertainty': uncertainty,
            'sparsity': self.sparsities(),
            'budget': self.budget,
            'importance_updates': self.importance_updates,
            'skipped_updates': self.skipped_updates,
            'reallocations': self.reallocations,
            'last_step': self.last_step,
            'start_budget': self.start_budget,
            'final_budget': self.final_budget,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore EMAs, budget and per-update sparsity.

        Args:
            state: What ``state_dict`` returned.

        Raises:
            ValueError: The state comes from a model with other updates, or other factor shapes.
        """
        missing = set(self.layers) - set(state['sparsity'])
        extra = set(state['sparsity']) - set(self.layers)
        if missing or extra:
            raise ValueError('allocator state does not fit this model: '
                             f'{len(missing)} updates missing from it (e.g. {sorted(missing)[:3]}), '
                             f'{len(extra)} unknown to the model (e.g. {sorted(extra)[:3]}); '
                             'was it saved with other SNELLA targets or another backbone?')
        for name, tensors in state['sensitivity'].items():
            expected = [tuple(p.shape) for p in self._factor_pairs(self.layers[name])]
            if [tuple(t.shape) for t in tensors] != expected:
                raise ValueError(f'allocator importance for {name} has shapes {[tuple(t.shape) for t in tensors]},'
                                 f' the model has {expected}: the rank or layer size differs')
        device = next(iter(self.layers.values())).in_factors.device
        self.sensitivity = {n: [t.to(device) for t in ts] for n, ts in state['sensitivity'].items()}
        self.uncertainty = {n: [t.to(device) for t in ts] for n, ts in state['uncertainty'].items()}
        set_sparsities([self.layers[name] for name in state['sparsity']], list(state['sparsity'].values()))
        for key in ('budget', 'importance_updates', 'skipped_updates', 'reallocations', 'last_step',
                    'start_budget', 'final_budget'):
            setattr(self, key, state[key])

    def summary(self, top: Optional[int] = None) -> str:
        """A readable table of the current allocation.

        Args:
            top: Show only this many updates, the least sparse first; None: all.

        Returns:
            The table, one line per update under a header.
        """
        scores = self.scores()
        rows = sorted(self.layers.items(), key=lambda kv: kv[1].sparsity_value)
        if top is not None:
            rows = rows[:top]
        width = max(len('layer'), *(len(name) for name, _ in rows))
        lines = [f'SNELLA allocation at step {self.last_step}: budget {self.budget:,} of '
                 f'{sum(m.numel for m in self.layers.values()):,} entries, overall sparsity '
                 f'{self.overall_sparsity():.4f} (target {self.target_ratio:.4f})',
                 f'{"layer":<{width}} {"sparsity":>9} {"kept":>12} {"score":>11}']
        for name, layer in rows:
            kept = layer.numel - round(layer.sparsity_value * layer.numel)
            lines.append(f'{name:<{width}} {layer.sparsity_value:>9.4f} {kept:>12,} {scores[name]:>11.3e}')
        return '\n'.join(lines)
