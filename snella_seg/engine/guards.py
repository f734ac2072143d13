"""Stop a run loudly instead of letting it go quietly wrong: non-finite gradients, incompatible resumes."""
import torch
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmseg.registry import HOOKS

from ..snella.layer import DELTA_KEY
from .allocator_hook import _torch_optimizers


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
        self._handles: list = []

    def before_train(self, runner) -> None:
        for optimizer in _torch_optimizers(runner.optim_wrapper):
            self._handles.append(optimizer.register_step_pre_hook(self._check_gradients))

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        self._iteration = runner.iter + 1

    def _check_gradients(self, optimizer, args, kwargs) -> None:
        grads = [p.grad for group in optimizer.param_groups for p in group['params'] if p.grad is not None]
        if grads and not bool(torch.stack([torch.isfinite(g).all() for g in grads]).all()):  # one device sync
            raise FloatingPointError(
                f'non-finite gradients at iteration {self._iteration} (loss diverged): training stopped '
                'before this step was applied or saved; the last checkpoint is intact. Lower the learning '
                'rate, enable gradient clipping (optim_wrapper.clip_grad), or use --amp with bf16.')

    def after_train(self, runner) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


@HOOKS.register_module()
class ResumeCompatibilityHook(Hook):
    """Refuse ``--resume`` from a checkpoint whose tensors do not fit the model the config builds.

    mmengine loads checkpoints with ``strict=False``, which would silently keep random weights wherever the
    config changed (another backbone, rank, class count).
    """

    priority = 'VERY_HIGH'

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        if not getattr(runner, '_resume', False):
            return  # load_from may legitimately fine-tune from a different model
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        own = model.state_dict()
        saved = checkpoint.get('state_dict', {})
        shape = [f'{k}: checkpoint {tuple(v.shape)} vs config {tuple(own[k].shape)}'
                 for k, v in saved.items() if k in own and hasattr(v, 'shape') and v.shape != own[k].shape]
        unknown = sorted(k for k in saved if k not in own)
        missing = sorted(k for k in own if k not in saved and _must_be_saved(model, k))
        if shape or unknown or missing:
            raise ValueError(
                'cannot resume: the checkpoint was written by a different config. '
                f'{len(shape)} tensors differ in shape (e.g. {shape[:3]}), {len(unknown)} are unknown to this model '
                f'(e.g. {unknown[:3]}), {len(missing)} are missing (e.g. {missing[:3]}). Resume with the config the '
                'run started with, or start a new run with load_from to fine-tune from this checkpoint.')


def _must_be_saved(model: torch.nn.Module, key: str) -> bool:
    """Frozen backbone weights may be absent from delta-only checkpoints; everything else must be there."""
    return DELTA_KEY in key or not key.startswith('backbone.') or not getattr(model.backbone, 'delta_only', False)
