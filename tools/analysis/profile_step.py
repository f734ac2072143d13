"""What one training iteration of a config costs a GPU beyond its arithmetic: host syncs, operators, kernel launches,
optimizer groups.

The config's own Runner trains a few iterations on generated data at a small crop (the counts do not depend on the
image size) and ``DispatchCounter`` counts everything from the first ``before_train_iter`` hook to the last
``after_train_iter`` hook of the profiled iteration, allocator and guards included. The profiled iteration is the
last one, inside the final warm-up, where the allocator reallocates at every iteration. Its launches are split by
phase: ``forward`` (the model's forward and loss), ``backward``, ``optimizer`` (step and zero_grad) and ``hooks``
(everything else in the iteration, the allocator among it). Then one evaluation forward of the backbone and one of
the whole segmentor are counted. Each SNELLA config (``snella_<rest>.py``) is profiled with
its LoRA baseline (``baselines/lora_<rest>.py``) beside it, and its launches per iteration are given as a ratio to
LoRA's.

Example: python tools/analysis/profile_step.py configs/snella_vit-l_ade20k.py --out work_dirs/step_profile.json
"""
import argparse
import contextlib
import copy
import os
import os.path as osp
import tempfile
from typing import Dict, List, Optional

import torch
from mmengine.config import Config, DictAction
from mmengine.hooks import Hook

from benchmark import baseline_config_path
from dispatch_counter import DispatchCounter, kernels_as_on_a_gpu
from estimate_memory import publish

FIXED_PIPELINE = [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations', reduce_zero_label=True),
                  dict(type='PackSegInputs')]


def _host_resident_step_counts(optimizer: torch.optim.Optimizer) -> List[torch.Tensor]:
    """AdamW keeps its ``step`` counts on the CPU unless fused or capturable: reading them syncs nothing on a GPU."""
    if any(g.get('fused') or g.get('capturable') for g in optimizer.param_groups):
        return []
    return [s['step'] for s in optimizer.state.values() if torch.is_tensor(s.get('step'))]


def _in_phase(counter: DispatchCounter, phase: str, method):
    def counted(*args, **kwargs):
        with counter.in_phase(phase):
            return method(*args, **kwargs)
    return counted


class _StartCounting(Hook):
    """Start counting the ``iteration``-th iteration, inside ``counted_only`` (a context manager factory)."""

    priority = 'HIGHEST'

    def __init__(self, counter: DispatchCounter, iteration: int, counted_only=contextlib.nullcontext) -> None:
        self.counter, self.iteration, self.counted_only = counter, iteration, counted_only
        self.stack = contextlib.ExitStack()

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        if runner.iter + 1 != self.iteration:
            return
        steps = _host_resident_step_counts(runner.optim_wrapper.optimizer)
        self.counter.host_resident = {id(t) for t in steps}
        self.counter.phase = 'hooks'
        model, wrapper = runner.model, runner.optim_wrapper
        for owner, name, phase in ((model, 'train_step', 'forward'), (wrapper, 'backward', 'backward'),
                                   (wrapper, 'step', 'optimizer'), (wrapper, 'zero_grad', 'optimizer')):
            setattr(owner, name, _in_phase(self.counter, phase, getattr(owner, name)))
            self.stack.callback(owner.__dict__.pop, name)  # the class's method again
        self.stack.enter_context(self.counted_only())
        self.stack.enter_context(self.counter)


class _StopCounting(Hook):
    priority = 'LOWEST'

    def __init__(self, start: _StartCounting) -> None:
        self.start = start

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if runner.iter + 1 == self.start.iteration:
            self.start.stack.close()


def narrow_encoder(cfg: Config, width: int) -> None:
    """Give a named ``TimmViT`` encoder ``width`` channels (2 heads), keeping its timm model, depth and outputs.

    Operator and launch counts do not depend on the width, so a narrow copy counts as the full model does, and
    Triton's interpreter (``--force-fused``) runs it in minutes.

    Args:
        cfg: A config whose ``model.backbone.backbone`` (SNELLA, LoRA) or ``model.backbone`` (full fine-tuning,
            frozen) is a ``TimmViT`` with a named arch; changed in place, with the neck's and heads' input channels.
    """
    from snella_seg.models.backbones.families.registry import named_archs
    encoder = cfg.model.backbone.get('backbone', cfg.model.backbone)
    spec = named_archs('TimmViT')[encoder.arch]
    encoder.update(arch=dict(family=spec.model_type, timm_name=spec.timm_name, embed_dim=width, num_heads=2),
                   out_indices=encoder.get('out_indices') or spec.out_indices, pretrained=None)
    channels = [width] * len(encoder.out_indices)
    if cfg.model.get('neck'):
        cfg.model.neck.update(in_channels=channels, out_channels=width)
    cfg.model.decode_head.update(in_channels=channels, channels=width)
    if cfg.model.get('auxiliary_head'):
        cfg.model.auxiliary_head.update(in_channels=width, channels=width)


def profile_config(config: str, crop: int = 64, iterations: int = 8, cfg_options: Optional[dict] = None,
                   width: Optional[int] = None, foreach_optimizer: bool = False, counted_only=contextlib.nullcontext
                   ) -> Dict:
    """Counts of the last of ``iterations`` training iterations of ``config``, and of evaluation forwards.

    Args:
        config (str): an mmseg config file; it trains on generated data, without pretrained weights.
        crop (int): square input size (the counts do not depend on it).
        iterations (int): iterations to train; the last one is counted.
        cfg_options (dict, optional): config overrides, as ``--cfg-options`` takes them.
        width (int, optional): narrow the encoder to this many channels (``narrow_encoder``).
        foreach_optimizer (bool): the optimizer's ``foreach=True``, as it runs by default on a GPU (torch picks the
            foreach implementation for CUDA tensors, the per-tensor one for CPU tensors).
        counted_only: a context manager factory entered around the counted iteration and evaluation forwards alone
            (``fused_kernels_forced``: the warm-up iterations then run eager, outside Triton's slow interpreter).

    Returns:
        Dict: ``adapted_layers``, ``optimizer_groups``, ``optimizer_tensors``, and ``operators``, ``launches``,
        ``launches_by_phase``, ``host_syncs`` and ``syncs_by_operator`` of ``train_step``, ``backbone_eval_forward``
        and ``segmentor_eval_forward``.
    """
    import snella_seg  # noqa: F401  (registers the components)
    from mmengine.runner import Runner

    from snella_seg.datasets.demo_data import make_ade20k_like
    cfg = Config.fromfile(config)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    if width:
        narrow_encoder(cfg, width)
    if foreach_optimizer:
        cfg.optim_wrapper.optimizer.foreach = True
    with tempfile.TemporaryDirectory() as scratch:
        data_root = make_ade20k_like(osp.join(scratch, 'data'), num_train=4, num_val=1, size=crop)
        _shrink(cfg, data_root, osp.join(scratch, 'work'), crop, iterations)
        runner = Runner.from_cfg(cfg)
        training = DispatchCounter()
        start = _StartCounting(training, iterations, counted_only)
        runner.register_hook(start)
        runner.register_hook(_StopCounting(start))
        runner.train()
        model = runner.model
        batch = model.data_preprocessor(next(iter(runner.train_dataloader)), False)
        model.eval()
        with torch.no_grad(), counted_only():
            with DispatchCounter() as backbone_eval:
                model.backbone(batch['inputs'])
            with DispatchCounter() as segmentor_eval:
                model.predict(batch['inputs'], batch['data_samples'])
        groups = runner.optim_wrapper.optimizer.param_groups
    return {
        'config': config,
        'adapted_layers': sum(1 for m in model.modules() if type(m).__name__ == 'SNELLALinear'),
        'optimizer_groups': len(groups),
        'optimizer_tensors': sum(len(g['params']) for g in groups),
        'train_step': _summary(training),
        'backbone_eval_forward': _summary(backbone_eval),
        'segmentor_eval_forward': _summary(segmentor_eval),
    }


def _summary(counter: DispatchCounter) -> Dict:
    return {'operators': counter.total, 'launches': counter.launches, 'triton_launches': counter.triton_launches,
            'launches_by_phase': counter.launches_by_phase(), 'host_syncs': counter.host_syncs,
            'syncs_by_operator': counter.syncs_by_operator()}


def with_lora_baselines(configs: List[str]) -> List[str]:
    """``configs`` with the LoRA baseline of each SNELLA config after it, unless listed already or not shipped.

    Args:
        configs (List[str]): config files.

    Returns:
        List[str]: the configs to profile, in order.
    """
    listed = {osp.abspath(c) for c in configs}
    ordered = []
    for config in configs:
        ordered.append(config)
        if osp.basename(config).startswith('snella_'):
            try:
                lora = baseline_config_path(config, 'lora')
            except FileNotFoundError:
                continue
            if osp.abspath(lora) not in listed:
                listed.add(osp.abspath(lora))
                ordered.append(lora)
    return ordered


def add_launch_ratios(rows: List[Dict]) -> None:
    """``launches_vs_lora`` in each row whose config has a LoRA row for the same ``<rest>.py`` (LoRA's own: 1.0)."""
    lora = {osp.basename(r['config'])[len('lora_'):]: r for r in rows if osp.basename(r['config']).startswith('lora_')}
    for row in rows:
        rest = osp.basename(row['config']).partition('_')[2]
        if rest in lora:
            row['launches_vs_lora'] = row['train_step']['launches'] / lora[rest]['train_step']['launches']


def _shrink(cfg: Config, data_root: str, work_dir: str, crop: int, iterations: int) -> None:
    """Train on generated data at ``crop`` for ``iterations``, without checkpoints, validation or pretrained weights."""
    cfg.work_dir = work_dir
    cfg.visualizer.name = f'visualizer:{work_dir}'
    loader = cfg.train_dataloader
    loader.update(batch_size=2, num_workers=0, persistent_workers=False)
    loader.dataset.update(data_root=data_root, pipeline=FIXED_PIPELINE)
    loader.dataset.pop('indices', None)
    for key in ('val_dataloader', 'val_cfg', 'val_evaluator', 'test_dataloader', 'test_cfg', 'test_evaluator'):
        cfg[key] = None
    cfg.model.data_preprocessor.size = (crop, crop)
    backbone = cfg.model.backbone.get('backbone', cfg.model.backbone)
    backbone.update(img_size=crop, pretrained=None)
    cfg.model.backbone.pop('init_cfg', None)
    cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=iterations, val_interval=iterations + 1)
    cfg.default_hooks.checkpoint.update(interval=iterations + 1, save_last=False)
    cfg.default_hooks.logger.interval = 1
    cfg.default_hooks.pop('visualization', None)
    cfg.log_level = 'WARNING'


PHASES = ('forward', 'backward', 'optimizer', 'hooks')


def format_table(rows: List[Dict]) -> str:
    """One line per config: operators, launches per iteration (by phase, and their ratio to LoRA's), host syncs.

    Args:
        rows (List[Dict]): ``profile_config`` results, ``add_launch_ratios`` applied.

    Returns:
        str: a header line and a line per row.
    """
    header = (f'{"config":<44} {"layers":>6} {"groups":>6} {"step ops":>9} {"launches per iteration":>22} '
              f'{"x LoRA":>6} ' + ' '.join(f'{phase:>9}' for phase in PHASES) +
              f' {"step syncs":>10} {"eval ops":>9} {"eval syncs":>10}')
    lines = [header]
    for row in rows:
        ratio = f'{row["launches_vs_lora"]:.2f}' if 'launches_vs_lora' in row else '-'
        by_phase = row['train_step'].get('launches_by_phase', {})
        lines.append(f'{osp.basename(row["config"]):<44} {row["adapted_layers"]:>6} {row["optimizer_groups"]:>6} '
                     f'{row["train_step"]["operators"]:>9,} {row["train_step"]["launches"]:>22,} {ratio:>6} '
                     + ' '.join(f'{by_phase.get(phase, 0):>9,}' for phase in PHASES) +
                     f' {row["train_step"]["host_syncs"]:>10} '
                     f'{row["segmentor_eval_forward"]["operators"]:>9,} '
                     f'{row["segmentor_eval_forward"]["host_syncs"]:>10}')
    return '\n'.join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description='Host syncs, operators and optimizer groups of one training step')
    parser.add_argument('configs', nargs='+')
    parser.add_argument('--crop', type=int, default=64, help='square input size; counts do not depend on it')
    parser.add_argument('--iterations', type=int, default=8,
                        help='iterations to train; the last one (inside the final warm-up) is counted')
    parser.add_argument('--force-cuda-selection', action='store_true',
                        help='on a CPU, run the kernels without host reads, as on a GPU (topk selection, the '
                             'zero-distance mask always)')
    parser.add_argument('--no-lora-baseline', action='store_true',
                        help="do not add each SNELLA config's LoRA baseline (baselines/lora_<rest>.py)")
    parser.add_argument('--force-fused', action='store_true',
                        help="build SNELLA's ΔW through the fused Triton path on the CPU, in Triton's interpreter, in "
                             'the counted iteration and evaluation forwards (run with TRITON_INTERPRET=1; slow at '
                             'full width: narrow the model with --width)')
    parser.add_argument('--foreach-optimizer', action='store_true',
                        help="the optimizer's foreach=True, as torch picks it on a GPU: foreach operators launch a "
                             'kernel per chunk of tensors')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='overrides for every config, e.g. a narrower encoder of the same depth')
    parser.add_argument('--width', type=int,
                        help="count a copy of each config's encoder with this many channels (same timm model and "
                             'depth; counts do not depend on the width)')
    parser.add_argument('--out', help='write the results as JSON here')
    return parser


def main(argv=None) -> List[Dict]:
    args = build_parser().parse_args(argv)
    configs = args.configs if args.no_lora_baseline else with_lora_baselines(args.configs)
    if args.force_fused and os.environ.get('TRITON_INTERPRET') != '1':
        raise SystemExit('profile_step: --force-fused runs Triton kernels on the CPU, which needs TRITON_INTERPRET=1 '
                         'in the environment: TRITON_INTERPRET=1 python tools/analysis/profile_step.py ...')
    counted_only = contextlib.nullcontext
    if args.force_fused:
        from snella_seg.snella.fused_kernels import fused_kernels_forced as counted_only
    with contextlib.ExitStack() as stack:
        if args.force_cuda_selection:
            stack.enter_context(kernels_as_on_a_gpu())
        rows = [profile_config(config, args.crop, args.iterations, args.cfg_options, args.width,
                               args.foreach_optimizer, counted_only) for config in configs]
    add_launch_ratios(rows)
    publish(format_table(rows), copy.deepcopy(rows), args.out)
    return rows


if __name__ == '__main__':
    main()
