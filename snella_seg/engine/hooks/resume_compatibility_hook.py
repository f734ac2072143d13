"""Refuse a ``--resume`` that mmengine's non-strict load would let go quietly wrong."""
from typing import List

import torch
from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.runner import Runner
from mmseg.registry import HOOKS

from ...snella.layer import DELTA_KEY
from ..optimizers.snella_optim_wrapper_constructor import merge_per_tensor_checkpoint
from .hook_utils import unwrap_model

# Top-level config key that lets a resume go on with a schedule other than the checkpoint's.
SCHEDULE_CHANGE_OPTION = 'resume_with_changed_schedule'
SCHEDULE_LENGTH_KEYS = ('max_iters', 'max_epochs')


class ResumeRefusedError(ValueError):
    """A ``--resume`` refused because the checkpoint does not fit the run the config describes."""


@HOOKS.register_module()
class ResumeCompatibilityHook(Hook):
    """Refuse ``--resume`` from a checkpoint that does not fit the run the config describes.

    mmengine loads checkpoints with ``strict=False``, which would silently keep random weights wherever the
    config changed (another backbone, rank, class count). It also restores the learning-rate schedulers whole,
    so a resume with another ``train_cfg.max_iters`` (or ``param_scheduler``) would keep the checkpoint's
    schedule (iterations past its end train at its final learning rate) while the SNELLA allocator re-plans its
    budget for the new length. Such a resume is refused unless the config sets ``resume_with_changed_schedule=True``.
    """

    priority = 'VERY_HIGH'

    def after_load_checkpoint(self, runner: Runner, checkpoint: dict) -> None:
        """Check a resumed checkpoint against the model and the schedule, then convert per-tensor optimizer state.

        Args:
            runner: The Runner; only a ``--resume`` is checked, since ``load_from`` may fine-tune another model.
            checkpoint: The loaded checkpoint; its per-tensor optimizer state is merged into the current groups.

        Raises:
            ResumeRefusedError: If tensors differ in shape, are unknown to the model, or are missing (frozen base
                weights of delta-only checkpoints excepted), or if the schedule differs from the checkpoint's and
                the config does not accept that.
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
            raise ResumeRefusedError(
                'cannot resume: the checkpoint was written by a different config. '
                f'{len(shape)} tensors differ in shape (e.g. {shape[:3]}), {len(unknown)} are unknown to this model '
                f'(e.g. {unknown[:3]}), {len(missing)} are missing (e.g. {missing[:3]}). Resume with the config the '
                'run started with, or start a new run with load_from to fine-tune from this checkpoint.')
        _check_schedule_unchanged(runner, checkpoint)
        merge_per_tensor_checkpoint(checkpoint, model, runner.optim_wrapper)  # saved before groups were merged


def _must_be_saved(model: torch.nn.Module, key: str) -> bool:
    """Return whether ``key`` must be in a checkpoint: all but frozen base weights of delta-only checkpoints."""
    return DELTA_KEY in key or not key.startswith('backbone.') or not getattr(model.backbone, 'delta_only', False)


def _schedule_changes(saved_cfg: Config, cfg: Config) -> List[str]:
    """Return the schedule settings of ``cfg`` that differ from the checkpoint's config, as 'key: old -> new'."""
    saved_train, train = saved_cfg.get('train_cfg') or {}, cfg.get('train_cfg') or {}
    changes = [f'train_cfg.{key}: {saved_train.get(key)} -> {train.get(key)}'
               for key in SCHEDULE_LENGTH_KEYS if saved_train.get(key) != train.get(key)]
    if saved_cfg.get('param_scheduler') != cfg.get('param_scheduler'):
        changes.append(f"param_scheduler: {saved_cfg.get('param_scheduler')} -> {cfg.get('param_scheduler')}")
    return changes


def _check_schedule_unchanged(runner: Runner, checkpoint: dict) -> None:
    """Refuse (or, when the config accepts it, warn about) a resume whose schedule is not the checkpoint's.

    Raises:
        ResumeRefusedError: If the schedule differs and the config does not set ``resume_with_changed_schedule``.
    """
    saved_text = checkpoint.get('meta', {}).get('cfg')
    if not saved_text:
        return  # not written by a Runner: nothing to compare with
    try:
        saved_cfg = Config.fromstring(saved_text, '.py')
    except Exception as error:  # a config text that no longer parses must not stop a resume
        runner.logger.warning(f'the checkpoint\'s config cannot be read ({error!r}), so its schedule is not '
                              'compared with this run\'s')
        return
    changes = _schedule_changes(saved_cfg, runner.cfg)
    if not changes:
        return
    consequence = (f'the schedule differs from the checkpoint\'s ({"; ".join(changes)}). Resumed as it is, the '
                   'learning-rate schedulers restored from the checkpoint keep their own length and shape, so '
                   'iterations past their end train at their final learning rate (0 for a poly schedule to '
                   'eta_min=0), while the SNELLA allocator re-plans its budget for '
                   f'{runner.max_iters} iterations.')
    if runner.cfg.get(SCHEDULE_CHANGE_OPTION, False):
        runner.logger.warning(f'resuming although {consequence} ({SCHEDULE_CHANGE_OPTION}=True)')
        return
    raise ResumeRefusedError(
        f'cannot resume: {consequence} Choose one: to finish the run as it was planned, resume with its schedule '
        '(drop the change, e.g. --cfg-options train_cfg.max_iters=<the checkpoint\'s>); to train on the '
        "checkpoint's weights with a learning-rate schedule and allocation over the new length, start a new run "
        'from iteration 0 with --cfg-options load_from=<checkpoint> (without --resume); to resume anyway as '
        f'described, add --cfg-options {SCHEDULE_CHANGE_OPTION}=True.')
