"""Mixed precision that cannot fail silently: ``--amp`` on a GPU builds this wrapper.

mmengine's ``AmpOptimWrapper`` has three hazards for a long run. Under fp16 a diverged (NaN) loss looks like an
overflow to the ``GradScaler``, so every later step is skipped, silently (the optimizer's step pre-hooks, where
``FiniteTrainingHook`` checks the gradients, never run on a skipped step). A fused optimizer
(``AdamW(fused=True)``) makes the scaler call ``optimizer.step`` on every step, overflow steps included, with scaled
gradients in its step pre-hooks (the allocator's importance update among them). And it uses fp16 even where the
GPU computes bf16, whose fp32 exponent range needs no loss scaling at all.
"""
from contextlib import contextmanager
from typing import Iterator, Optional, Union

import torch
from mmengine.logging import print_log
from mmengine.optim import AmpOptimWrapper, OptimWrapper
from mmseg.registry import OPTIM_WRAPPERS

AMP_DTYPES = ('float16', 'bfloat16')


def choose_amp_dtype(device_type: str) -> torch.dtype:
    """Choose bf16 where the device computes it natively (CUDA compute capability 8.0+, CPUs), fp16 otherwise.

    ``including_emulation=False``: on older GPUs torch emulates bf16, correct but far slower than fp16.

    Args:
        device_type: The autocast device, ``'cuda'`` or ``'cpu'``.

    Returns:
        ``torch.bfloat16`` or ``torch.float16``.
    """
    if device_type == 'cuda' and not torch.cuda.is_bf16_supported(including_emulation=False):
        return torch.float16
    return torch.bfloat16


@OPTIM_WRAPPERS.register_module()
class GuardedAmpOptimWrapper(AmpOptimWrapper):
    """Autocast in bf16 (no loss scaling) or fp16 with dynamic loss scaling that stops a run whose steps are skipped.

    Under fp16 the run stops with ``FloatingPointError``, naming the iteration, after ``max_consecutive_skips``
    consecutive skipped (overflow) steps, or when dynamic scaling has lowered the scale below ``min_loss_scale``.
    A healthy run skips a handful of steps while the scale calibrates from 65536 and then one in hundreds or
    thousands; a diverged loss skips every step and halves the scale each time, so from 65536 the scale falls
    below 1 (the point where torch's documentation says "something is likely wrong") at the 17th skip.
    ``None`` turns either check off.

    Gradients are always unscaled before ``optimizer.step`` and the step is taken only when they are finite, for
    fused optimizers too (which ``GradScaler.step`` would step on every iteration with scaled gradients): every
    step pre-hook sees true gradients and never runs on an overflow step. Host syncs per step under fp16: one
    (reading whether the gradients overflowed, the read ``GradScaler.step`` makes itself for non-fused optimizers),
    plus one on a skipped step only (reading the scale). Under bf16 the scaler is off: none.

    Args:
        loss_scale: as mmengine's ``AmpOptimWrapper``: ``'dynamic'``, a float (static scale) or a dict of
            ``GradScaler`` arguments. Ignored under bf16.
        dtype: ``'float16'``, ``'bfloat16'``, or None to choose bf16 where the device supports it natively.
        max_consecutive_skips: fp16 only; consecutive skipped steps that stop the run.
        min_loss_scale: fp16 dynamic scaling only; a scale below it stops the run.
        device_type: the autocast device, ``'cuda'`` where CUDA is available and ``'cpu'`` otherwise by default.
        **kwargs: ``OptimWrapper``'s arguments (``optimizer``, ``clip_grad``, ...).

    Raises:
        ValueError: If ``dtype`` is not one of ``AMP_DTYPES`` or None, or ``max_consecutive_skips`` is below 1.
        TypeError: If ``loss_scale`` is none of ``'dynamic'``, a float or a dict.
    """

    def __init__(self, loss_scale: Union[str, float, dict] = 'dynamic', dtype: Optional[str] = None,
                 max_consecutive_skips: Optional[int] = 20, min_loss_scale: Optional[float] = 1.0,
                 device_type: Optional[str] = None, **kwargs) -> None:
        # AmpOptimWrapper.__init__ insists on CUDA and builds torch.cuda.amp's scaler; state_dict and backward are
        # inherited as they are, so checkpoints keep its 'loss_scaler' entry.
        OptimWrapper.__init__(self, **kwargs)
        self.device_type = device_type or ('cuda' if torch.cuda.is_available() else 'cpu')
        if dtype is not None and dtype not in AMP_DTYPES:
            raise ValueError(f'GuardedAmpOptimWrapper dtype must be one of {AMP_DTYPES} or None (bf16 where the '
                             f'device supports it, fp16 otherwise), got {dtype!r}')
        self.cast_dtype = getattr(torch, dtype) if dtype else choose_amp_dtype(self.device_type)
        if max_consecutive_skips is not None and max_consecutive_skips < 1:
            raise ValueError(f'max_consecutive_skips must be a positive int or None (no limit), '
                             f'got {max_consecutive_skips!r}')
        self.max_consecutive_skips = max_consecutive_skips
        self.min_loss_scale = min_loss_scale
        self._scale_update_param = loss_scale if isinstance(loss_scale, float) else None
        self.loss_scaler = self._build_loss_scaler(loss_scale)
        self._consecutive_skips = 0
        self._last_applied_iteration: Optional[int] = None
        print_log(self._describe(dtype_chosen_here=dtype is None), logger='current')

    def _build_loss_scaler(self, loss_scale: Union[str, float, dict]) -> torch.amp.GradScaler:
        """Build the scaler ``loss_scale`` asks for, enabled under fp16 only.

        Returns:
            The scaler.

        Raises:
            TypeError: If ``loss_scale`` is none of ``'dynamic'``, a float or a dict.
        """
        uses_scaling = self.cast_dtype == torch.float16
        if loss_scale == 'dynamic':
            return torch.amp.GradScaler(self.device_type, enabled=uses_scaling)
        if isinstance(loss_scale, float):
            return torch.amp.GradScaler(self.device_type, init_scale=loss_scale, enabled=uses_scaling)
        if isinstance(loss_scale, dict):
            return torch.amp.GradScaler(self.device_type, **dict(loss_scale, enabled=uses_scaling))
        raise TypeError(f"loss_scale must be 'dynamic', a float (static scale) or a dict of GradScaler "
                        f'arguments, got {loss_scale!r}')

    def _describe(self, dtype_chosen_here: bool) -> str:
        """Return the log line saying which precision and scaling the run uses, and why."""
        if self.cast_dtype == torch.bfloat16:
            return f'mixed precision: bf16 autocast on {self.device_type}, no loss scaling'
        no_bf16 = dtype_chosen_here and self.device_type == 'cuda'
        reason = ' (this GPU has no native bf16: compute capability below 8.0)' if no_bf16 else ''
        scaling = 'static' if self._scale_update_param is not None else 'dynamic'
        return (f'mixed precision: fp16 autocast on {self.device_type}{reason} with {scaling} loss scaling; '
                f'max_consecutive_skips={self.max_consecutive_skips}, min_loss_scale={self.min_loss_scale}')

    def step(self, **kwargs) -> None:
        """Unscale, clip, step only on finite gradients, update the scale, and stop a run that only skips.

        Args:
            **kwargs: Passed to ``optimizer.step``.

        Raises:
            FloatingPointError: Under fp16, when the skipped steps reach ``max_consecutive_skips`` or the scale
                falls below ``min_loss_scale``.
        """
        if not self.loss_scaler.is_enabled():
            if self.clip_grad_kwargs:
                self._clip_grad()
            self.optimizer.step(**kwargs)
            return
        self.loss_scaler.unscale_(self.optimizer)
        if self.clip_grad_kwargs:
            self._clip_grad()
        skipped = self._gradients_overflowed()
        if not skipped:
            # unscaled and finite: a fused optimizer, given no grad_scale or found_inf, steps as a plain one
            self.optimizer.step(**kwargs)
        self.loss_scaler.update(self._scale_update_param)
        self._stop_if_only_skipping(skipped)

    def _gradients_overflowed(self) -> bool:
        """Return whether the unscaled gradients hold inf or NaN on any device."""
        found_inf = self.loss_scaler._found_inf_per_device(self.optimizer)
        return bool(sum(v.item() for v in found_inf.values()))  # one host sync per device, as GradScaler.step

    def _stop_if_only_skipping(self, skipped: bool) -> None:
        """Count consecutive skipped steps and stop the run past either limit (``_stop``)."""
        iteration = self._inner_count
        if not skipped:
            self._consecutive_skips = 0
            self._last_applied_iteration = iteration
            return
        self._consecutive_skips += 1
        if self.min_loss_scale is not None and self._scale_update_param is None:
            scale = self.loss_scaler.get_scale()  # a host sync, on skipped steps only
            if scale < self.min_loss_scale:
                self._stop(iteration, f'the fp16 loss scale fell to {scale:g} (below optim_wrapper.min_loss_scale='
                                      f'{self.min_loss_scale:g}): steps overflow faster than the scale recovers')
        if self.max_consecutive_skips is not None and self._consecutive_skips >= self.max_consecutive_skips:
            self._stop(iteration, f'{self._consecutive_skips} consecutive steps had inf/NaN gradients and were '
                                  f'skipped (optim_wrapper.max_consecutive_skips={self.max_consecutive_skips})')

    def _stop(self, iteration: int, cause: str) -> None:
        """Stop the run, naming the iteration, the cause, the last applied step and the remedies.

        Raises:
            FloatingPointError: Always.
        """
        last = (f'the last applied step was iteration {self._last_applied_iteration}'
                if self._last_applied_iteration is not None else 'no step was applied since the run started')
        raise FloatingPointError(
            f'fp16 training stopped at iteration {iteration}: {cause}. The loss diverged or overflows fp16, and '
            f'fp16 loss scaling would skip every later step without a word ({last}). Lower the learning rate, '
            'enable gradient clipping (optim_wrapper.clip_grad), or train in bf16 '
            "(optim_wrapper.dtype='bfloat16', which --amp picks on GPUs that support it).")

    def load_state_dict(self, state_dict: dict) -> None:
        """Load a wrapper state, including a bf16 run's empty scaler state, which GradScaler refuses.

        An fp16 resume from a bf16 checkpoint scales afresh.

        Args:
            state_dict: The wrapper state from a checkpoint.
        """
        if state_dict.get('loss_scaler') == {}:
            state_dict = {k: v for k, v in state_dict.items() if k != 'loss_scaler'}
        super().load_state_dict(state_dict)

    @contextmanager
    def optim_context(self, model: torch.nn.Module) -> Iterator[None]:
        """Run the forward pass under ``torch.autocast`` in the chosen dtype.

        It calls ``torch.autocast`` itself: mmengine's autocast refuses fp16 on the CPU, which torch supports.

        Args:
            model: The model being trained.

        Yields:
            Nothing: the body runs under autocast.
        """
        with OptimWrapper.optim_context(self, model), torch.autocast(self.device_type, dtype=self.cast_dtype):
            yield
