"""Memory and speed of SNELLA against LoRA, full fine-tuning and mask-based sparse tuning, side by side.

The baselines are the configs of ``configs/baselines/`` (``baseline_config_path``), so the benchmark measures
what those configs train.

Each method trains the full segmentor (preprocessor, backbone, neck, heads, loss, backward, AdamW step) for a few
iterations on random data in a fresh process, so that peak memory belongs to that method alone. Ratios only mean
something within one run: machines are noisy.

``--update-host-time`` measures instead what a GPU cannot hide: the host time of one adapted update where arithmetic
vanishes (``UPDATE_HOST_SETTING``: stacked 16x16 Linears, one thread, the GPU's selection path), SNELLA against LoRA
and a plain frozen Linear. On a GPU a step costs at least that time per update, whatever its arithmetic. SNELLA is
measured twice: on the eager path, and on the fused path with each Triton launch replaced by nothing
(``snella-fused``: the host time around the kernels; Triton's own launch cost comes on top on a GPU).

``--methods all`` measures every method that ``configs/baselines/`` holds a config of (``available_methods``),
with SNELLA and 'masked'; a method without a config for the given backbone is skipped with a note.

Example: python tools/analysis/benchmark.py --crop 512 --batch 2 --out benchmark.json
"""
import argparse
import json
import os
import os.path as osp
import re
import resource
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager, nullcontext
from typing import Callable, ContextManager, Dict, Iterator, List, Optional, Sequence, Tuple
from unittest import mock

import torch

from dispatch_counter import kernels_as_on_a_gpu
from estimate_memory import (estimate_training_memory, freeze_batchnorm_for_single_images, publish,
                             random_segmentation_batch)

METHODS = ('full', 'frozen', 'lora', 'masked', 'snell', 'snella')
DEFAULT_CONFIG = 'configs/snella_vit-b_ade20k.py'


def _current_rss_mb() -> float:
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 2 ** 20


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _minor_page_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


# The configs/baselines/ file of each method, by its name's prefix. 'masked' (two-stage sparse tuning's training
# stage, measured here only) starts from full fine-tuning and masks the gradients (``_mask_gradients``).
# Every other method's file is named after the method itself (``bitfit_<rest>.py``, ``peft-lora_<rest>.py`` ...).
BASELINE_PREFIX = {'full': 'full', 'frozen': 'frozen', 'lora': 'lora', 'masked': 'full', 'snell': 'snell'}
# Wrappers whose ``backbone`` is the inner backbone the benchmark resizes.
WRAPPERS = ('SNELLABackbone', 'PEFTBackbone')


def baseline_config_path(config: str, method: str) -> str:
    """The config that trains ``method`` with ``config``'s backbone, neck, heads and data.

    Args:
        config (str): a SNELLA config file, ``snella_<rest>.py``.
        method (str): one of ``METHODS``.

    Returns:
        str: ``config`` itself for SNELLA, else its baseline ``baselines/<method>_<rest>.py`` next to it, as
        ``configs/baselines/`` holds for every ADE20K config.

    Raises:
        ValueError: ``config`` is not named ``snella_<rest>.py``.
        FileNotFoundError: the baseline file does not exist.
    """
    if method == 'snella':
        return config
    folder, name = osp.split(config)
    if not name.startswith('snella_'):
        raise ValueError(f'{config}: the benchmark finds the baselines of a config named snella_<rest>.py in '
                         'baselines/<method>_<rest>.py next to it; rename it, or pass --methods snella')
    prefix = BASELINE_PREFIX.get(method, method)
    path = osp.join(folder, 'baselines', f'{prefix}_{name[len("snella_"):]}')
    if not osp.isfile(path):
        raise FileNotFoundError(f'no {method} baseline for {config}: expected {path} (configs/baselines/ has one '
                                'per method for the ADE20K configs); write it like configs/baselines/'
                                f'{prefix}_vit-b_ade20k.py, or leave {method} out of --methods')
    return path


def available_methods(config: str) -> List[str]:
    """Every method the benchmark knows next to ``config``: ``METHODS`` first, then each ``<method>`` that names a
    file of the ``baselines/`` folder beside it, for any backbone, in alphabetical order.

    Args:
        config (str): a SNELLA config file, ``snella_<rest>.py``.

    Returns:
        List[str]: the method names ``--methods all`` stands for.
    """
    folder = osp.join(osp.dirname(config), 'baselines')
    files = os.listdir(folder) if osp.isdir(folder) else []
    found = {name.split('_', 1)[0] for name in files if name.endswith('.py')}
    return list(METHODS) + sorted(found - set(METHODS))


def resolve_methods(config: str, requested: Sequence[str]) -> Tuple[List[str], Dict[str, str]]:
    """The methods to measure for ``config``: ``'all'`` expands to ``available_methods``; a known method without a
    config for this backbone (VPT-deep on SAM, any baseline of a config without baselines) is skipped.

    Args:
        config (str): a SNELLA config file, ``snella_<rest>.py``.
        requested (Sequence[str]): method names, ``'all'`` among them or not.

    Returns:
        Tuple[List[str], Dict[str, str]]: the methods to measure, in order and each once, and for each skipped one
        why.

    Raises:
        ValueError: a name that no file of ``baselines/`` beside ``config`` has, or a ``config`` not named
            ``snella_<rest>.py`` with baselines requested.
    """
    known = available_methods(config)
    unknown = [m for m in requested if m != 'all' and m not in known]
    if unknown:
        raise ValueError(f'unknown methods {unknown}: {config} has {known} (or all)')
    names = known if 'all' in requested else list(dict.fromkeys(requested))
    methods, skipped = [], {}
    for method in names:
        try:
            baseline_config_path(config, method)
        except FileNotFoundError as missing:
            skipped[method] = str(missing).split(' (', 1)[0]
            continue
        methods.append(method)
    return methods, skipped


def _config(args: argparse.Namespace, method: str):
    """``method``'s config (``baseline_config_path``) at the benchmark's crop, arch, rank (SNELLA's wrapper and peft's
    ``r``; AdaLoRA keeps its budget) and target ratio, without pretrained weights."""
    from mmengine.config import Config
    cfg = Config.fromfile(baseline_config_path(args.config, method))
    cfg.model.data_preprocessor.size = (args.crop, args.crop)
    adapted = cfg.model.backbone.type == 'SNELLABackbone'
    inner = cfg.model.backbone.backbone if cfg.model.backbone.type in WRAPPERS else cfg.model.backbone
    if args.arch:
        inner.arch = args.arch
    inner.update(img_size=args.crop, pretrained=None)
    if args.out_indices:
        inner.out_indices = tuple(args.out_indices)
    if adapted:
        cfg.model.backbone.snella.rank = args.rank
        if method == 'snell':
            cfg.model.backbone.snella.sparsity = args.target_ratio
    elif 'r' in cfg.model.backbone.get('method', {}).get('config', {}):  # peft's LoRA, DoRA, LoHa, LoKr
        cfg.model.backbone.method.config.r = args.rank
    if getattr(args, 'amp', None):
        # explicit: fp16 or bf16 autocast; on CUDA through the wrapper --amp builds there (mmengine's would run a
        # loss scaler under bf16 too), on the CPU through the one it builds there
        if args.device.startswith('cuda'):
            cfg.optim_wrapper.update(type='GuardedAmpOptimWrapper', dtype=args.amp, device_type='cuda')
        else:
            cfg.optim_wrapper.update(type='CPUAmpOptimWrapper', dtype=args.amp)
    if args.embed_dim:
        cfg.model.neck.update(in_channels=[args.embed_dim] * 4, out_channels=args.embed_dim)
        cfg.model.decode_head.in_channels = [args.embed_dim] * 4
        cfg.model.auxiliary_head.in_channels = args.embed_dim
    if getattr(args, 'head_channels', None):
        cfg.model.decode_head.channels = args.head_channels
        cfg.model.auxiliary_head.channels = args.head_channels
    return cfg


def _mask_gradients(model: torch.nn.Module, targets: List[str], kept: float, seed: int = 0) -> int:
    """Two-stage sparse tuning's training stage: only the target Linear weights train, through a fixed random
    gradient mask keeping ``kept`` of their entries; AdamW still holds state for every full weight."""
    generator = torch.Generator().manual_seed(seed)
    model.backbone.requires_grad_(False)
    count = 0
    for name, module in model.backbone.named_modules():
        if isinstance(module, torch.nn.Linear) and any(re.fullmatch(t, name) for t in targets):
            mask = (torch.rand(module.weight.shape, generator=generator) < kept).to(module.weight.device)
            module.weight.requires_grad_(True)
            module.weight.register_hook(lambda grad, mask=mask: grad * mask)
            count += 1
    return count


def _sync(device: str) -> None:
    if device.startswith('cuda'):
        torch.cuda.synchronize()


def measure_training(args: argparse.Namespace, method: str,
                     warmup_step_context: Callable[[], ContextManager] = nullcontext) -> Dict:
    """Train ``method`` for warm-up + measured iterations and report sizes, memory and median step time.

    ``warmup_step_context()`` is entered around each warm-up step, e.g. to count its host syncs without slowing the
    timed steps."""
    import snella_seg  # noqa: F401  (registers the components)
    from mmengine.model.utils import revert_sync_batchnorm
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS

    from snella_seg.snella import BiLevelAllocator
    init_default_scope('mmseg')
    torch.manual_seed(0)
    cfg = _config(args, method)
    model = revert_sync_batchnorm(MODELS.build(cfg.model)).to(args.device).train()
    freeze_batchnorm_for_single_images(model, args.batch)
    if method == 'masked':
        _mask_gradients(model, _targets(args), 1 - args.target_ratio)
    wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    importance_seconds: List[float] = []
    if method == 'snella':
        # at the target sparsity, where the budget schedule ends and most of training runs: every forward then
        # selects the entries to keep, as in training (at sparsity 0 nothing would be selected)
        allocator = BiLevelAllocator(model, target_ratio=args.target_ratio, total_steps=10 ** 6,
                                     init_sparsity=args.target_ratio)

        def update_importance(*_):
            _sync(args.device)
            start = time.perf_counter()
            allocator.update_importance()
            _sync(args.device)
            importance_seconds.append(time.perf_counter() - start)
        wrapper.optimizer.register_step_pre_hook(update_importance)
    data = random_segmentation_batch(args.batch, args.crop, cfg.model.decode_head.num_classes)
    if args.device.startswith('cuda'):
        torch.cuda.reset_peak_memory_stats()
    rss_after_build = _current_rss_mb()
    times, faults = [], []
    for step in range(args.warmup + args.iters):
        _sync(args.device)
        start, faults_before = time.perf_counter(), _minor_page_faults()
        with warmup_step_context() if step < args.warmup else nullcontext():
            model.train_step(data, wrapper)
        _sync(args.device)
        times.append(time.perf_counter() - start)
        faults.append(_minor_page_faults() - faults_before)
    measured = times[args.warmup:]
    state_bytes = sum(t.numel() * t.element_size() for s in wrapper.optimizer.state.values()
                      for t in s.values() if torch.is_tensor(t))
    peak = (torch.cuda.max_memory_allocated() / 2 ** 20 if args.device.startswith('cuda') else _peak_rss_mb())
    return {
        'method': method,
        'trainable_params': sum(p.numel() for p in model.parameters() if p.requires_grad),
        'optimizer_state_mb': state_bytes / 2 ** 20,
        'peak_memory_mb': peak,
        'peak_over_build_mb': None if args.device.startswith('cuda') else peak - rss_after_build,
        'step_seconds': statistics.median(measured),
        'page_faults_per_step': statistics.median(faults[args.warmup:]),
        'importance_fraction': (statistics.median(importance_seconds[args.warmup:]) / statistics.median(measured)
                                if importance_seconds else None),
        'update_sparsity': _mean_update_sparsity(model),
    }


def _mean_update_sparsity(model: torch.nn.Module) -> Optional[float]:
    """Size-weighted sparsity of the SNELLA/SNELL/LoRA updates the steps ran with (None without updates)."""
    from snella_seg.snella import SparseKernelDelta
    deltas = [m for m in model.modules() if isinstance(m, SparseKernelDelta)]
    if not deltas:
        return None
    return sum(d.sparsity_value * d.numel for d in deltas) / sum(d.numel for d in deltas)


def _targets(args: argparse.Namespace) -> List[str]:
    from mmengine.config import Config
    return list(Config.fromfile(args.config).model.backbone.snella.targets)


def measure_inference(args: argparse.Namespace) -> Dict:
    """Merged SNELLA against the plain frozen backbone: same outputs as unmerged, same inference time."""
    import snella_seg  # noqa: F401
    from mmengine.model.utils import revert_sync_batchnorm
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS

    from snella_seg.snella import merge_snella
    init_default_scope('mmseg')
    torch.manual_seed(0)
    snella = revert_sync_batchnorm(MODELS.build(_config(args, 'snella').model)).to(args.device).eval()
    x = torch.randn(args.batch, 3, args.crop, args.crop, device=args.device)

    def timed(model):
        with torch.no_grad():
            out = model.backbone(x)
            runs = []
            for _ in range(args.iters + 1):
                _sync(args.device)
                start = time.perf_counter()
                model.backbone(x)
                _sync(args.device)
                runs.append(time.perf_counter() - start)
        return out, statistics.median(runs[1:])
    unmerged, unmerged_time = timed(snella)
    snella.backbone = merge_snella(snella.backbone.backbone)
    merged, merged_time = timed(snella)
    plain = revert_sync_batchnorm(MODELS.build(_config(args, 'frozen').model)).to(args.device).eval()
    _, plain_time = timed(plain)
    return {'max_abs_diff_merged_vs_unmerged': max(float((a - b).abs().max()) for a, b in zip(merged, unmerged)),
            'backbone_seconds': {'snella_unmerged': unmerged_time, 'snella_merged': merged_time,
                                 'frozen_plain': plain_time}}


# Sizes at which a step's arithmetic vanishes and its host time is left: 12 stacked width x width Linears, batch 4,
# rank 4; forward + backward averaged over 60 steps after 5 of warm-up.
UPDATE_HOST_SETTING = dict(layers=12, width=16, batch=4, rank=4, steps=60, warmup=5)
UPDATE_HOST_METHODS = ('snella', 'lora', 'frozen', 'snella-fused')


@contextmanager
def _fused_launches_stubbed() -> Iterator[None]:
    """SNELLA's fused path on any device, each Triton launch replaced by nothing (the values are then garbage)."""
    from snella_seg.snella import fused_kernels
    with fused_kernels.fused_kernels_forced(), mock.patch.object(fused_kernels, '_launch', lambda *a, **k: None):
        yield


def _stacked_linears(method: str, setting: Dict, sparsity: float, device: str = 'cpu') -> torch.nn.Module:
    """``setting['layers']`` Linears in a row: SNELLA or LoRA (``kernel='linear'``) updates at ``setting['rank']``,
    or the plain frozen layers."""
    from snella_seg.snella import inject_snella
    torch.manual_seed(0)
    model = torch.nn.Sequential(*(torch.nn.Linear(setting['width'], setting['width'])
                                  for _ in range(setting['layers'])))
    if method == 'frozen':
        model.requires_grad_(False)
    else:
        inject_snella(model, [r'\d+'], rank=setting['rank'], kernel='snella' if method == 'snella' else 'linear',
                      sparsity=sparsity if method == 'snella' else 0.0)
    return model.to(device)


def measure_update_host_time(method: str, sparsity: float = 0.7, device: str = 'cpu', **overrides: int) -> Dict:
    """Host time of one adapted update's forward + backward at tiny sizes, on one thread, SNELLA on the GPU's path.

    On CUDA every step ends with a synchronize, so the figure is the longer of the host's launching and the GPU's
    work, which at these sizes is the launching; SNELLA runs its fused kernels there (``use_fused(False)`` around
    the call times its eager path).

    Args:
        method (str): ``'snella'``, ``'lora'``, ``'frozen'`` (plain Linears, nothing trained; the input's gradient
            still runs backward through every layer, as through a frozen layer inside a network) or
            ``'snella-fused'`` (``_fused_launches_stubbed``: the fused path's host work on a CPU).
        sparsity (float): SNELLA's fraction of zeroed entries, so that every step selects the entries it keeps.
        device (str): where the layers run.
        **overrides (int): changes to ``UPDATE_HOST_SETTING`` (``layers``, ``width``, ``batch``, ``rank``,
            ``steps``, ``warmup``).

    Returns:
        Dict: ``method``, ``microseconds_per_update``, the setting it was measured at and the device.
    """
    setting = dict(UPDATE_HOST_SETTING, **overrides)
    fused = method == 'snella-fused'
    model = _stacked_linears('snella' if fused else method, setting, sparsity, device)
    x = torch.randn(setting['batch'], setting['width'], device=device, requires_grad=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    seconds = 0.0
    try:
        with kernels_as_on_a_gpu(), _fused_launches_stubbed() if fused else nullcontext():
            for step in range(setting['warmup'] + setting['steps']):
                model.zero_grad(set_to_none=True)
                x.grad = None
                _sync(device)
                start = time.perf_counter()
                model(x).sum().backward()
                _sync(device)
                if step >= setting['warmup']:
                    seconds += time.perf_counter() - start
    finally:
        torch.set_num_threads(threads)
    per_update = seconds / setting['steps'] / setting['layers']
    return {'method': method, 'microseconds_per_update': per_update * 1e6, 'setting': setting, 'device': device,
            'sparsity': sparsity if method.startswith('snella') else 0.0}


def measure_update_host_times(args: argparse.Namespace) -> Dict:
    """``measure_update_host_time`` of SNELLA, LoRA and a plain frozen Linear, each in a fresh process, alternating
    over ``args.repeats`` (median), with each one's ratio to LoRA."""
    runs: Dict[str, List[float]] = {method: [] for method in UPDATE_HOST_METHODS}
    for method in alternating_order(list(UPDATE_HOST_METHODS), args.repeats):
        runs[method].append(_in_fresh_process(args, f'update-host-time:{method}')['microseconds_per_update'])
    rows = [{'method': method, 'microseconds_per_update': statistics.median(runs[method]),
             'microseconds_per_update_runs': runs[method]} for method in UPDATE_HOST_METHODS]
    for row in rows:
        row['vs_lora'] = row['microseconds_per_update'] / rows[1]['microseconds_per_update']
    setting = dict(UPDATE_HOST_SETTING, steps=args.host_steps)
    return {'settings': dict(setting, sparsity=args.target_ratio, repeats=args.repeats, threads=1,
                             selection='GPU path (kernels_as_on_a_gpu)', torch=torch.__version__),
            'update_host_time': rows}


def format_update_host_table(result: Dict) -> str:
    """The host time per adapted update as a Markdown table.

    Args:
        result (Dict): ``measure_update_host_times``'s result.

    Returns:
        str: one row per method: microseconds per update and the ratio to LoRA.
    """
    lines = ['| method | host µs per adapted update (forward + backward) | x LoRA |', '|---|---|---|']
    lines += [f'| {r["method"]} | {r["microseconds_per_update"]:.0f} | {r["vs_lora"]:.2f} |'
              for r in result['update_host_time']]
    return '\n'.join(lines)


def _worker_args(args: argparse.Namespace) -> List[str]:
    flags = ['--config', args.config, '--crop', str(args.crop), '--batch', str(args.batch), '--iters',
             str(args.iters), '--warmup', str(args.warmup), '--rank', str(args.rank), '--target-ratio',
             str(args.target_ratio), '--device', args.device, '--host-steps', str(args.host_steps)]
    if args.arch:
        flags += ['--arch', args.arch]
    if args.embed_dim:
        flags += ['--embed-dim', str(args.embed_dim)]
    if args.out_indices:
        flags += ['--out-indices', *map(str, args.out_indices)]
    if args.amp:
        flags += ['--amp', args.amp]
    if args.head_channels:
        flags += ['--head-channels', str(args.head_channels)]
    return flags


# glibc raises its mmap threshold after large frees, then serves big blocks from a heap it rarely returns: peak
# RSS then counts freed memory, unequally across methods (measured: +1.1 GB for SNELLA's transient kernel
# matrices at 64x64). A fixed threshold makes RSS track live memory, but page faults make it slow, so on CPU
# memory is measured in a separate two-step run with it (the second step is the first to hold optimizer state
# and activations at once), and time in a run without it.
TRUE_RSS_ENV = {'MALLOC_MMAP_THRESHOLD_': '65536'}
# glibc's settings for --keep-freed-memory: no block is mmapped, and freed memory is never given back, so after the
# warm-up a step reuses pages instead of faulting them in again. A minor fault costs microseconds, and a ViT-B
# 512x512 batch-2 step takes over a million of them (mostly the heads' large blocks, for every method alike): on a
# 2-core VM that was half of the step, and how much varied from run to run. Other C libraries ignore these.
KEEP_FREED_MEMORY_ENV = {'MALLOC_MMAP_MAX_': '0', 'MALLOC_TRIM_THRESHOLD_': str(2 ** 42)}


def _worker_environment(extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """This process's environment with ``extra`` set and, first on PYTHONPATH, the folder of the ``snella_seg`` this
    process imported: a worker measures the same package, wherever it came from (an install, a checkout)."""
    import snella_seg
    package_root = osp.dirname(osp.dirname(osp.abspath(snella_seg.__file__)))
    inherited = os.environ.get('PYTHONPATH')
    return dict(os.environ, **(extra or {}),
                PYTHONPATH=package_root + (os.pathsep + inherited if inherited else ''))


def _in_fresh_process(args: argparse.Namespace, job: str, extra_flags=(), env=None) -> Dict:
    command = [sys.executable, osp.abspath(__file__), '--worker', job, *_worker_args(args), *extra_flags]
    result = subprocess.run(command, capture_output=True, text=True, env=_worker_environment(env))
    if result.returncode != 0:
        raise RuntimeError(f'benchmark of {job!r} failed:\n{result.stderr[-4000:]}')
    return json.loads(result.stdout.strip().splitlines()[-1])


def alternating_order(methods: List[str], repeats: int) -> List[str]:
    """The methods once per repeat, every other repeat reversed (a b, b a, a b ...): a slow spell of a shared
    machine, or a drift over the run, then falls on every method alike."""
    order: List[str] = []
    for repeat in range(repeats):
        order += list(methods) if repeat % 2 == 0 else list(reversed(methods))
    return order


def _measure_all(args: argparse.Namespace) -> List[Dict]:
    """Each method timed in ``args.repeats`` fresh processes, alternating with the others; its row has the median
    step time over them (each already the median of its measured iterations) and every run's, their median page
    faults per step (timed under KEEP_FREED_MEMORY_ENV with ``--keep-freed-memory``), and, on the CPU, the peak
    memory of one separate run (see TRUE_RSS_ENV; ``--skip-memory`` leaves it out and the peak unset)."""
    runs: Dict[str, List[Dict]] = {method: [] for method in args.methods}
    timing_env = KEEP_FREED_MEMORY_ENV if args.keep_freed_memory else None
    for method in alternating_order(args.methods, args.repeats):
        runs[method].append(_in_fresh_process(args, method, env=timing_env))
    rows = []
    for method in args.methods:
        row = dict(runs[method][0])
        row['step_seconds_runs'] = [r['step_seconds'] for r in runs[method]]
        row['step_seconds'] = statistics.median(row['step_seconds_runs'])
        row['page_faults_per_step'] = statistics.median(r['page_faults_per_step'] for r in runs[method])
        if row['importance_fraction'] is not None:
            row['importance_fraction'] = statistics.median(r['importance_fraction'] for r in runs[method])
        if not args.device.startswith('cuda'):
            memory = ({'peak_memory_mb': None, 'peak_over_build_mb': None} if getattr(args, 'skip_memory', False)
                      else _in_fresh_process(args, method, ['--warmup', '1', '--iters', '1'], TRUE_RSS_ENV))
            row.update(peak_memory_mb=memory['peak_memory_mb'], peak_over_build_mb=memory['peak_over_build_mb'])
        rows.append(row)
    return rows


def run_benchmark(args: argparse.Namespace) -> Dict:
    """Every method in its own processes, then ratios against LoRA and full fine-tuning.

    Args:
        args (argparse.Namespace): ``build_parser``'s arguments; ``args.methods`` becomes the methods measured
            (``resolve_methods``).

    Returns:
        Dict: the settings, one ``training`` row per method, ``skipped`` methods with why, and (unless skipped or
        estimating) the inference comparison.
    """
    args.methods, skipped = resolve_methods(args.config, args.methods)
    for method, why in skipped.items():
        print(f'note: {method} skipped: {why}', file=sys.stderr)
    if args.estimate_memory:
        rows = [estimate_memory(args, method) for method in args.methods]
    else:
        rows = _measure_all(args)
    _add_ratios(rows)
    result = {'settings': {k: v for k, v in vars(args).items() if k not in ('worker', 'out')}, 'training': rows,
              'skipped': skipped}
    if not (args.skip_inference or args.estimate_memory):
        result['inference'] = _in_fresh_process(args, 'inference')
    return result


def estimate_memory(args: argparse.Namespace, method: str) -> Dict:
    """Estimated peak GPU memory of ``method`` (see ``estimate_memory``): no computation, no timing."""
    def prepare(model: torch.nn.Module) -> None:
        if method == 'masked':
            _mask_gradients(model, _targets(args), 1 - args.target_ratio)
    estimate = estimate_training_memory(_config(args, method), batch=args.batch, crop=args.crop, prepare=prepare,
                                        allocator=method == 'snella', amp=bool(getattr(args, 'amp', None)))
    return {'method': method, 'trainable_params': estimate['trainable_params'],
            'optimizer_state_mb': estimate['optimizer_state_mb'], 'peak_memory_mb': estimate['peak_mb'],
            'step_seconds': None, 'importance_fraction': None}


def _add_ratios(rows: List[Dict]) -> None:
    by_method = {r['method']: r for r in rows}
    for row in rows:
        for reference in ('lora', 'full', 'masked'):
            if reference in by_method:
                ref = by_method[reference]
                if row['peak_memory_mb'] is not None:
                    row[f'memory_vs_{reference}'] = row['peak_memory_mb'] / ref['peak_memory_mb']
                if row['step_seconds'] is not None:
                    row[f'time_vs_{reference}'] = row['step_seconds'] / ref['step_seconds']


def format_table(result: Dict) -> str:
    """The training rows as a Markdown table, then the skipped methods and the inference comparison.

    Args:
        result (Dict): ``run_benchmark``'s result.

    Returns:
        str: one row per method: trainable parameters, optimizer state, peak memory, step time and their ratios.
    """
    device = result['settings']['device']
    memory = 'peak CUDA MB' if device.startswith('cuda') else 'peak RSS MB'
    if result['settings'].get('estimate_memory'):
        memory = 'estimated peak GPU MB'
    header = (f'| method | trainable | optimizer state MB | {memory} | x LoRA | x full | x masked | step s | '
              'x LoRA | x full | importance % | page faults per step |')
    lines = [header, '|' + '---|' * (header.count('|') - 1)]
    for r in result['training']:
        def ratio(key):
            return f'{r[key]:.2f}' if key in r else '-'
        importance = f'{100 * r["importance_fraction"]:.2f}' if r['importance_fraction'] is not None else '-'
        step = f'{r["step_seconds"]:.2f}' if r['step_seconds'] is not None else '-'
        faults = f'{r["page_faults_per_step"]:,.0f}' if r.get('page_faults_per_step') is not None else '-'
        peak = f'{r["peak_memory_mb"]:.0f}' if r['peak_memory_mb'] is not None else '-'
        lines.append(f'| {r["method"]} | {r["trainable_params"] / 1e6:.2f}M | {r["optimizer_state_mb"]:.1f} | '
                     f'{peak} | {ratio("memory_vs_lora")} | {ratio("memory_vs_full")} | '
                     f'{ratio("memory_vs_masked")} | {step} | {ratio("time_vs_lora")} | '
                     f'{ratio("time_vs_full")} | {importance} | {faults} |')
    lines += [f'skipped {method}: {why}' for method, why in result.get('skipped', {}).items()]
    if 'inference' in result:
        inf = result['inference']
        times = inf['backbone_seconds']
        lines.append('')
        lines.append(f'inference (backbone forward): merged SNELLA {times["snella_merged"]:.3f} s, frozen plain '
                     f'{times["frozen_plain"]:.3f} s (x{times["snella_merged"] / times["frozen_plain"]:.2f}), '
                     f'unmerged SNELLA {times["snella_unmerged"]:.3f} s; merged vs unmerged max |diff| '
                     f'{inf["max_abs_diff_merged_vs_unmerged"]:.2e}')
    return '\n'.join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description='Benchmark SNELLA against LoRA, full and mask-based tuning')
    parser.add_argument('--config', default=DEFAULT_CONFIG,
                        help='a SNELLA config, snella_<rest>.py; the baselines are baselines/<method>_<rest>.py next '
                        'to it')
    parser.add_argument('--arch', help="override the backbone arch, e.g. 'vit-l' or 'sam-l'")
    parser.add_argument('--out-indices', type=int, nargs=4, help='override out_indices (with --arch)')
    parser.add_argument('--embed-dim', type=int, help='override neck/head input width (with --arch)')
    parser.add_argument('--head-channels', type=int,
                        help="override the heads' width (a tiny --arch's benchmark would otherwise time the heads)")
    parser.add_argument('--crop', type=int, default=512)
    parser.add_argument('--batch', type=int, default=1)
    parser.add_argument('--iters', type=int, default=3, help='measured iterations')
    parser.add_argument('--warmup', type=int, default=1)
    parser.add_argument('--repeats', type=int, default=1,
                        help='fresh processes per method, alternating between methods; the step time is their median')
    parser.add_argument('--rank', type=int, default=32)
    parser.add_argument('--target-ratio', type=float, default=0.7, help='SNELLA/SNELL/masked sparsity')
    parser.add_argument('--methods', nargs='+', default=list(METHODS),
                        help=f"methods to measure (default: {' '.join(METHODS)}), or 'all': every method of the "
                        'baselines/ folder beside --config; one without a config for this backbone is skipped')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--amp', choices=('bfloat16', 'float16'),
                        help='16-bit autocast of this type (default: fp32); estimates follow bf16 autocast')
    parser.add_argument('--keep-freed-memory', action='store_true',
                        help="time each method with glibc keeping freed memory (KEEP_FREED_MEMORY_ENV), so that a "
                        "CPU step is its arithmetic, not the kernel's page faults; peak memory is measured as always")
    parser.add_argument('--skip-inference', action='store_true')
    parser.add_argument('--skip-memory', action='store_true',
                        help="CPU: time only, without each method's separate peak-memory run (half the time)")
    parser.add_argument('--estimate-memory', action='store_true',
                        help='estimate peak GPU memory with fake tensors instead of training (no GPU, no timing)')
    parser.add_argument('--update-host-time', action='store_true',
                        help='instead of training: host time per adapted update at tiny sizes (UPDATE_HOST_SETTING), '
                        'SNELLA against LoRA and a plain frozen Linear, each in fresh processes (--repeats)')
    parser.add_argument('--host-steps', type=int, default=UPDATE_HOST_SETTING['steps'],
                        help='measured steps of --update-host-time')
    parser.add_argument('--out', help='write the results as JSON here')
    parser.add_argument('--worker', help=argparse.SUPPRESS)
    return parser


def main(argv=None) -> Dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f'--repeats must be at least 1, got {args.repeats}')
    if args.worker:  # one measurement in this (fresh) process; the parent reads the last line
        job, _, method = args.worker.partition(':')
        if job == 'update-host-time':
            result = measure_update_host_time(method, args.target_ratio, steps=args.host_steps)
        else:
            result = measure_inference(args) if args.worker == 'inference' else measure_training(args, args.worker)
        print(json.dumps(result))
        return result
    if args.update_host_time:
        result = measure_update_host_times(args)
        publish(format_update_host_table(result), result, args.out)
        return result
    result = run_benchmark(args)
    publish(format_table(result), result, args.out)
    return result


if __name__ == '__main__':
    main()
