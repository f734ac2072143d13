"""Refuse a ``--resume`` that mmengine's non-strict load would let go quietly wrong."""
import torch
from mmengine.hooks import Hook
from mmengine.runner import Runner
from mmseg.registry import HOOKS

from ...snella.layer import DELTA_KEY
from ..optimizers.snella_optim_wrapper_constructor import merge_per_tensor_checkpoint
from .hook_utils import unwrap_model


@HOOKS.register_module()
class ResumeCompatibilityHook(Hook):
    """Refuse ``--resume`` from a checkpoint whose tensors do not fit the model the config builds.

    mmengine loads checkpoints with ``strict=False``, which would silently keep random weights wherever the
    config changed (another backbone, rank, class count).
    """

    priority = 'VERY_HIGH'

    def after_load_checkpoint(self, runner: Runner, checkpoint: dict) -> None:
        """Refuse a resumed checkpoint that does not fit the model; convert an older optimizer layout in place.

        Args:
            runner: The Runner; only a ``--resume`` is checked, since ``load_from`` may fine-tune another model.
            checkpoint: The loaded checkpoint; its per-tensor optimizer state is merged into the current groups.

        Raises:
            ValueError: If tensors differ in shape, are unknown to the model, or are missing (frozen base weights
                of delta-only checkpoints excepted): the checkpoint was written by a different config.
        """
        if not getattr(runner, '_resume', False):
            return  # load_from may legitimately fine-tune from a different model
        model = unwrap_model(runner)
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
        merge_per_tensor_checkpoint(checkpoint, model, runner.optim_wrapper)  # saved before groups were merged


def _must_be_saved(model: torch.nn.Module, key: str) -> bool:
    """Return whether ``key`` must be in a checkpoint: all but frozen base weights of delta-only checkpoints."""
    return DELTA_KEY in key or not key.startswith('backbone.') or not getattr(model.backbone, 'delta_only', False)
