"""Only what trains reaches the optimizer, one param group per distinct setting.

The frozen backbone gets no optimizer state, and foreach or fused optimizers launch per group instead of per tensor
(SNELLA on a large ViT has hundreds of trainable tensors but a handful of settings).
"""
import logging
from contextlib import contextmanager
from typing import Iterator, List, Optional

import torch
from mmengine.logging import MMLogger
from mmengine.optim import DefaultOptimWrapperConstructor, OptimWrapper
from mmseg.registry import OPTIM_WRAPPER_CONSTRUCTORS
from torch import nn


class _PerParameterLines(logging.Filter):
    """Drop mmengine's per-parameter log lines (one per option, one per frozen tensor): thousands on a large ViT."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Return False for a per-parameter line, which drops it."""
        message = record.getMessage()
        return not (message.startswith('paramwise_options -- ') or message.endswith(' is skipped since its '
                                                                                      'requires_grad=False'))


@contextmanager
def _without_per_parameter_lines() -> Iterator[None]:
    """Keep mmengine's per-parameter lines out of the current log while the body runs (``_PerParameterLines``)."""
    logger = MMLogger.get_current_instance()
    quiet = _PerParameterLines()
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class SNELLAOptimWrapperConstructor(DefaultOptimWrapperConstructor):
    """Optimizer wrapper constructor that drops frozen parameters and groups tensors by setting.

    A ``DefaultOptimWrapperConstructor`` that also never decays kernel scalars and puts all tensors with identical
    settings into one param group.

    Parameters of at most one dimension (SNELLA's alpha, gamma, beta, norms, biases) get no weight decay; the
    usual ``paramwise_cfg.custom_keys`` set separate lr multipliers, e.g. ``{'.deltas.': dict(lr_mult=1.0),
    'decode_head': dict(lr_mult=10.0)}``. Tensors whose groups would carry the same options (every key but
    ``params``) share one group; groups come in the order of their first tensor, tensors in module order. The
    optimizer updates each tensor exactly as with one group per tensor, and schedulers scale each group's ``lr``
    from its ``initial_lr`` as before.

    Args:
        optim_wrapper_cfg: The config's ``optim_wrapper`` without ``constructor`` and ``paramwise_cfg``, e.g.
            ``dict(type='OptimWrapper', optimizer=dict(type='AdamW', lr=3e-4, weight_decay=0.01))``. Its
            ``weight_decay`` (times any ``decay_mult``) applies to trainable tensors of two or more dimensions
            only: the factors and the heads' weights.
        paramwise_cfg: mmengine's per-parameter options (``custom_keys``, ``bias_lr_mult``, ...). None (default)
            is an empty dict. ``norm_decay_mult`` defaults to 0.0 here, which keeps ``paramwise_cfg`` non-empty:
            only then does the parent class visit each parameter, which is how frozen ones get dropped. Whatever
            it says, tensors of at most one dimension get no weight decay.
    """

    def __init__(self, optim_wrapper_cfg: dict, paramwise_cfg: Optional[dict] = None) -> None:
        paramwise_cfg = dict(paramwise_cfg or {})
        paramwise_cfg.setdefault('norm_decay_mult', 0.0)  # non-empty, so the parent always calls add_params
        super().__init__(optim_wrapper_cfg, paramwise_cfg)

    def __call__(self, model: nn.Module) -> OptimWrapper:
        """Build the optimizer wrapper for ``model``'s trainable tensors.

        Args:
            model: The model to train.

        Returns:
            The wrapper; its optimizer refuses, saying why, a state saved with one param group per tensor.
        """
        optim_wrapper = super().__call__(model)
        optim_wrapper.optimizer.register_load_state_dict_pre_hook(_refuse_per_tensor_layout)
        return optim_wrapper

    def add_params(self, params: List[dict], module: nn.Module, prefix: str = '', **kwargs) -> None:
        """Append ``module``'s trainable tensors to ``params``, merged into one group per setting.

        Args:
            params: The param groups being built; extended in place.
            module: The model, or (in the parent class's recursion) one of its submodules.
            prefix: The submodule's name; empty at the top-level call, the only one that merges.
            **kwargs: The parent class's recursion arguments.
        """
        if prefix:  # recursion from the parent class: let it collect as usual
            return super().add_params(params, module, prefix, **kwargs)
        per_tensor: List[dict] = []
        with _without_per_parameter_lines():  # the summary below replaces them
            super().add_params(per_tensor, module, prefix, **kwargs)
        per_tensor = [group for group in per_tensor if group['params'][0].requires_grad]
        for group in per_tensor:
            if group['params'][0].ndim <= 1:  # kernel scalars (alpha, gamma, beta), norms, biases: never decayed,
                group['weight_decay'] = 0.0  # even when a custom key (which bypasses mmengine's own rules) matches
        merged = _merged_by_settings(per_tensor)
        params.extend(merged)
        _log_summary(merged, module)


def _settings(group: dict) -> dict:
    """Return a param group's options: every key but ``params``."""
    return {key: value for key, value in group.items() if key != 'params'}


def _merged_by_settings(per_tensor: List[dict]) -> List[dict]:
    """Merge per-tensor groups into one group per distinct setting, in order of first appearance.

    A linear scan, as settings are a handful and may hold unhashable values.

    Returns:
        The merged groups.
    """
    merged: List[dict] = []
    for group in per_tensor:
        settings = _settings(group)
        same = next((existing for existing in merged if _settings(existing) == settings), None)
        if same is None:
            merged.append(dict(settings, params=list(group['params'])))
        else:
            same['params'].extend(group['params'])
    return merged


def _log_summary(groups: List[dict], module: nn.Module) -> None:
    """Log what the optimizer holds, group by group, in place of mmengine's per-parameter lines."""
    tensors = sum(len(group['params']) for group in groups)
    kept = sum(p.numel() for group in groups for p in group['params'])
    frozen = sum(p.numel() for p in module.parameters() if not p.requires_grad)
    lines = [f'optimizer holds {kept:,} trainable parameters ({tensors} tensors) in {len(groups)} groups; '
             f'{frozen:,} frozen parameters get no optimizer state']
    for index, group in enumerate(groups):
        options = ', '.join(f'{key}={value}' for key, value in _settings(group).items()) or 'optimizer defaults'
        lines.append(f'  group {index} ({options}): {len(group["params"])} tensors, '
                     f'{sum(p.numel() for p in group["params"]):,} parameters')
    MMLogger.get_current_instance().info('\n'.join(lines))


def _is_per_tensor_layout(saved_groups: List[dict], groups: List[dict]) -> bool:
    """Return whether saved groups are the one-tensor-per-group layout of the tensors that ``groups`` merge."""
    tensors = sum(len(group['params']) for group in groups)
    return (len(saved_groups) != len(groups) and len(saved_groups) == tensors
            and all(len(group['params']) == 1 for group in saved_groups))


def _refuse_per_tensor_layout(optimizer: torch.optim.Optimizer, state_dict: dict) -> None:
    """Refuse an optimizer state saved with one param group per tensor, saying why and what to do.

    torch's own error ('different number of parameter groups') would not.

    Raises:
        ValueError: If ``state_dict`` has the per-tensor layout of this optimizer's tensors.
    """
    if _is_per_tensor_layout(state_dict['param_groups'], optimizer.param_groups):
        raise ValueError(
            f'cannot load this optimizer state: it has one param group per tensor ({len(state_dict["param_groups"])} '
            f'groups), as snella-seg saved it before tensors with identical settings shared a group; this optimizer '
            f'has {len(optimizer.param_groups)} groups. Resume through a config whose custom_hooks include '
            "dict(type='ResumeCompatibilityHook') (the shipped schedules do), which converts such checkpoints, or "
            'convert it with merge_per_tensor_checkpoint from snella_seg.engine.optimizers.'
            'snella_optim_wrapper_constructor.')


def merge_per_tensor_checkpoint(checkpoint: dict, model: nn.Module, optim_wrapper: OptimWrapper) -> bool:
    """Rewrite a checkpoint's per-tensor optimizer and scheduler state into the layout of ``optim_wrapper``.

    snella-seg saved one param group per tensor before groups were merged; such checkpoints are converted in place.

    The old groups followed the trainable tensors in module order; torch keys optimizer state by position across
    groups, so each tensor's state (``exp_avg``, ``step``, ...) moves to its position in the merged groups, each
    merged group takes the saved options (``lr``, ``initial_lr``, ...) of its tensors, which must agree, and every
    per-group list of the schedulers (``base_values``, ``_last_value``) keeps the entry of each group's first tensor.
    Anything else (already merged, or saved by another model) is left for ``load_state_dict`` to judge.

    Args:
        checkpoint: A loaded checkpoint; its ``optimizer`` and ``param_schedulers`` entries are rewritten.
        model: The model the optimizer was built for; its parameter order is the old groups' order.
        optim_wrapper: The Runner's optimizer wrapper, whose groups give the new layout.

    Returns:
        True if the checkpoint was converted.

    Raises:
        ValueError: If a merged group joins tensors whose saved options differ, or a saved state's shape does not
            match its tensor: the config is not the one the run started with.
    """
    saved = checkpoint.get('optimizer')
    if not isinstance(optim_wrapper, OptimWrapper) or not isinstance(saved, dict) or 'param_groups' not in saved:
        return False
    groups, saved_groups = optim_wrapper.optimizer.param_groups, saved['param_groups']
    if not _is_per_tensor_layout(saved_groups, groups):
        return False
    in_optimizer = {id(p) for group in groups for p in group['params']}
    old_position = {id(p): index for index, p in enumerate(p for p in model.parameters() if id(p) in in_optimizer)}
    merged_groups, merged_state, position = [], {}, 0
    for index, group in enumerate(groups):
        olds = [saved_groups[old_position[id(p)]] for p in group['params']]
        settings = _settings(olds[0])
        if any(_settings(old) != settings for old in olds[1:]):
            raise ValueError(f'cannot resume: param group {index} of this config joins tensors whose options differ '
                             'in the checkpoint; resume with the config the run started with')
        merged_groups.append(dict(settings, params=list(range(position, position + len(olds)))))
        for param, old in zip(group['params'], olds):
            state = saved['state'].get(old['params'][0])
            if state is not None:
                _check_shapes(state, param, position)
                merged_state[position] = state
            position += 1
    first_tensors = [old_position[id(group['params'][0])] for group in groups]
    per_group = len(saved_groups) + int('base_param_settings' in saved)  # mmengine's OptimWrapper appends that
    schedulers = checkpoint.get('param_schedulers')
    for scheduler in schedulers if isinstance(schedulers, list) else []:
        for key, value in scheduler.items():
            if isinstance(value, list) and len(value) == per_group:
                scheduler[key] = [value[i] for i in first_tensors] + value[len(saved_groups):]
    saved['param_groups'], saved['state'] = merged_groups, merged_state
    MMLogger.get_current_instance().info(
        f'resuming a checkpoint saved with one optimizer param group per tensor: its {len(saved_groups)} groups '
        f'now load as {len(groups)}')
    return True


def _check_shapes(state: dict, param: nn.Parameter, position: int) -> None:
    """Check that a saved tensor's optimizer state has the shape of the parameter it is moved to.

    Positions come from module order: a tensor-shaped state of another shape means the order is not the saved one,
    and loading would mix up the tensors' moments.

    Raises:
        ValueError: If a tensor-shaped state differs in shape from ``param``.
    """
    for name, value in state.items():
        if isinstance(value, torch.Tensor) and value.ndim and value.shape != param.shape:
            raise ValueError(f'cannot resume: optimizer state {name} of tensor {position} has shape '
                             f'{tuple(value.shape)}, the parameter {tuple(param.shape)}; resume with the config the '
                             'run started with')
