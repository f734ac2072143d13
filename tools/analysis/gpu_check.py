"""The GPU check of ``tools/analysis/gpu_check.sh``: what a lent GPU machine has to show, part by part.

A lent machine is bare and lent for minutes, so each part runs in its own process under its own time limit and
writes its own JSON as soon as it ends (a part that fails or runs out of time loses only itself). The parts come in
order of value, so that a check cut short still settles the targets:

1. ``environment``: GPU, driver, torch/CUDA versions, bf16 support.
2. ``selection``: SNELLA's CUDA selection (``topk``) against the CPU's on the same matrices: exact thresholds and
   kept counts. On the CPU: ``kth_smallest_by_topk`` and the sampled selection against ``kthvalue``.
3. ``training``: ViT-L, 512x512, batch 2, SNELLA, LoRA and full fine-tuning in bf16 autocast first (step time, peak
   memory beside its estimate, kernel launches per step from ``torch.profiler``, host syncs per step; the fused
   SNELLA path against eager where it exists: ΔW compared and, on a GPU, the bf16 step timed on both paths), then
   in fp32 with the time left.
4. ``runner``: the demo config through ``tools/train.py`` on generated data with fp16 and bf16 autocast, a
   checkpoint halfway, a resume that ends identical to an uninterrupted run, and ``tools/test.py``'s mIoU.
5. ``sam``: part 3 for SAM-L, LoRA and SNELLA, with whatever time is left.

Every part's JSON says whether it ``ran`` (to its end) and whether it ``met`` its targets (``TARGETS``; None where
it has none), with each target's figure and bound; it ``passed`` only if it ran, its checks held and no target was
missed.

``--tiny`` shrinks every model and run so that a CPU rehearses the whole check in a few minutes
(``--device cpu --tiny``, as tests/tools/analysis/test_gpu_check_rehearsal.py does).
"""
import argparse
import contextlib
import json
import os
import os.path as osp
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import torch

PARTS = ('environment', 'selection', 'training', 'runner', 'sam')
REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))

# SNELLA's delta matrices (in x out) at ViT-L: q, k, v and proj; fc1; fc2. The tiny one has more entries than
# kernels.MIN_SAMPLED_SELECTION, so the CPU's sampled selection runs on it too.
SELECTION_SHAPES = ((1024, 1024), (1024, 4096), (4096, 1024))
TINY_SELECTION_SHAPES = ((64, 64), (64, 256), (320, 320))
SELECTION_SPARSITIES = (0.1, 0.5, 0.7, 0.9, 0.99)

PRECISIONS = {'fp32': None, 'bf16': 'bfloat16', 'fp16': 'float16'}
# One training setting per part: config, crop, batch; tiny ones override the architecture (benchmark's --arch).
TRAINING_SETTINGS = {
    'training': dict(config='configs/snella_vit-l_ade20k.py', methods=('lora', 'snella', 'full')),
    'sam': dict(config='configs/snella_sam-l_ade20k.py', methods=('lora', 'snella')),
}
TINY_ARCHS = {
    'training': (dict(family='vit', embed_dim=64, depth=4, num_heads=2, patch_size=8),
                 'configs/snella_vit-b_ade20k.py'),
    'sam': (dict(family='sam', embed_dim=64, depth=4, num_heads=2, global_attn_indexes=(1, 3), window_size=2),
            'configs/snella_sam-b_ade20k.py'),
}
# SNELLA with its fused kernels switched off (``use_fused(False)``): eager, the reference path, timed in bf16 beside
# the fused one where a GPU runs the fused path, so that the check shows what fusing buys and costs.
EAGER = 'snella-eager'
CROP, BATCH, WARMUP, ITERS = 512, 2, 2, 5
TINY_CROP, TINY_ITERS = 32, 3
# Estimates made on the CPU ahead of time (benchmark.py --estimate-memory [--amp bfloat16]), read rather than redone
# on a lent machine: the file of a config name and precision.
ESTIMATE_FILES = {('configs/snella_vit-l_ade20k.py', 'fp32'): 'docs/benchmark_vit-l_512_b2_estimated-gpu.json',
                  ('configs/snella_vit-l_ade20k.py', 'bf16'): 'docs/benchmark_vit-l_512_b2_estimated-gpu-bf16.json',
                  ('configs/snella_sam-l_ade20k.py', 'fp32'): 'docs/benchmark_sam-l_512_b2_estimated-gpu.json',
                  ('configs/snella_sam-l_ade20k.py', 'bf16'): 'docs/benchmark_sam-l_512_b2_estimated-gpu-bf16.json'}
# What a GPU run (ViT-L 512, batch 2) should show, as (what is compared, precision, measure, reference, bound): SNELLA's
# bf16 step time, peak memory and kernel launches per step against LoRA's and full fine-tuning's, and the host time
# per adapted update at tiny sizes that the bf16 runs' processes measure after their steps (``_update_host_time``).
# Beside them, every run's peak memory lies within ESTIMATE_BOUNDS of the fake-tensor estimate.
TARGETS = (
    ('snella_bf16_time_vs_full', 'bf16', 'step_seconds', 'full', 1.05),
    ('snella_bf16_time_vs_lora', 'bf16', 'step_seconds', 'lora', 1.3),
    ('snella_bf16_memory_vs_lora', 'bf16', 'peak_memory_mb', 'lora', 0.90),
    ('snella_bf16_memory_vs_full', 'bf16', 'peak_memory_mb', 'full', 0.70),
    ('snella_bf16_launches_vs_lora', 'bf16', 'launches_per_step', 'lora', 1.3),
    ('snella_update_host_time_vs_lora', 'bf16', 'update_host_microseconds', 'lora', 2.0),
)
ESTIMATE_BOUNDS = (0.9, 1.5)
UPDATE_HOST_METHODS = ('snella', EAGER, 'lora')  # the runs that also time ``_update_host_time``

DEMO_CONFIG = 'configs/demo/snella_vit-tiny_demo-ade20k.py'
RUNNER_ITERS, TINY_RUNNER_ITERS = 30, 6
# A float tensor of a resumed run differing from the uninterrupted one's by more than this many times the same tensor
# of two uninterrupted runs (a GPU's atomics make runs differ) is a resume that lost state. Integer and bool tensors
# (RNG states, counts, masks) and the numbers of the RNG and allocator states must be equal.
RESUME_NOISE_FACTOR = 10.0
# Checkpoint entries that differ between any two runs (times, paths) and are not compared.
UNCOMPARED_ENTRIES = ('meta', 'message_hub')


def _cuda(device: str) -> bool:
    return device.startswith('cuda')


# ---------------------------------------------------------------------------------------------------- 1. environment
def _driver_version() -> Optional[str]:
    try:
        result = subprocess.run(['nvidia-smi', '--query-gpu=driver_version', '--format=csv,noheader'],
                                capture_output=True, text=True, timeout=15)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip().splitlines()[0] if result.returncode == 0 and result.stdout.strip() else None


def _packages() -> Tuple[Dict[str, Optional[str]], Dict[str, str]]:
    """Versions of the packages the check imports, and where each came from (the machine's or the wheelhouse's)."""
    import importlib
    versions, locations = {}, {}
    for name in ('torchvision', 'numpy', 'cv2', 'mmengine', 'mmseg', 'mmcv', 'timm'):
        try:
            module = importlib.import_module(name)
        except ImportError:
            versions[name] = None
        else:
            versions[name] = getattr(module, '__version__', '?')
            locations[name] = osp.dirname(module.__file__)
    return versions, locations


def _cpu_autocast_works(dtype: torch.dtype) -> bool:
    try:
        with torch.autocast('cpu', dtype=dtype):
            return (torch.ones(4, 4) @ torch.ones(4, 4)).dtype == dtype
    except RuntimeError:
        return False


def check_environment(device: str, tiny: bool, budget: float) -> Dict:
    """Versions of everything the check imports, and the device: a part failing later is read against these."""
    versions, locations = _packages()
    result = {'python': platform.python_version(), 'torch': torch.__version__, 'cuda_runtime': torch.version.cuda,
              'cuda_available': torch.cuda.is_available(), 'packages': versions, 'locations': locations,
              'cpu_count': os.cpu_count()}
    missing = [name for name, version in result['packages'].items() if version is None]
    if _cuda(device):
        if not torch.cuda.is_available():
            return dict(result, passed=False, error='no CUDA GPU visible; rehearse on a CPU with --device cpu --tiny')
        props = torch.cuda.get_device_properties(device)
        result.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2 ** 30, 1),
                      compute_capability=f'{props.major}.{props.minor}', multiprocessors=props.multi_processor_count,
                      driver=_driver_version(), cudnn=torch.backends.cudnn.version(),
                      bf16_supported=torch.cuda.is_bf16_supported())
    else:
        result.update(cpu=platform.processor() or platform.machine(),
                      bf16_supported=_cpu_autocast_works(torch.bfloat16),
                      fp16_autocast_supported=_cpu_autocast_works(torch.float16))
    result['passed'] = not missing
    if missing:
        result['error'] = f'cannot import {", ".join(missing)}'
    return dict(result, ran=True, met=None)


# ------------------------------------------------------------------------------------------------------ 2. selection
def _selection_matrices(shapes, seed: int = 0) -> Iterator[Tuple[str, torch.Tensor]]:
    """Magnitudes as SNELLA selects over them: continuous fp32, fp32 with many ties, and bf16 (autocast's)."""
    generator = torch.Generator().manual_seed(seed)
    for shape in shapes:
        values = torch.randn(shape, generator=generator).abs()
        yield f'{shape[0]}x{shape[1]} fp32', values
        yield f'{shape[0]}x{shape[1]} fp32 ties', (values * 20).round() / 20
        yield f'{shape[0]}x{shape[1]} bf16', values.bfloat16()


def check_selection(device: str, tiny: bool, budget: float) -> Dict:
    """Thresholds and kept counts of the device's selection against ``kthvalue`` on the CPU, bit for bit."""
    from snella_seg.snella import kernels
    cases = []
    for name, magnitude in _selection_matrices(TINY_SELECTION_SHAPES if tiny else SELECTION_SHAPES):
        flat = magnitude.flatten()
        for sparsity in SELECTION_SPARSITIES:
            k = kernels.zero_count(sparsity, flat.numel())
            expected = flat.kthvalue(k).values
            if _cuda(device):
                checked = {'cuda selection_threshold': kernels.selection_threshold(magnitude.to(device), sparsity)}
            else:
                checked = {'kth_smallest_by_topk': kernels.kth_smallest_by_topk(flat, k),
                           'cpu selection_threshold': kernels.selection_threshold(magnitude, sparsity)}
            for path, threshold in checked.items():
                kept = int((magnitude.to(threshold.device) > threshold).sum())
                expected_kept = int((magnitude > expected).sum())
                cases.append({'matrix': name, 'sparsity': sparsity, 'path': path, 'threshold': float(threshold),
                              'expected_threshold': float(expected), 'kept': kept, 'expected_kept': expected_kept,
                              'equal': bool(threshold.cpu() == expected) and kept == expected_kept})
    result = {'cases': cases, 'mismatches': [c for c in cases if not c['equal']]}
    if _cuda(device):
        result['seconds_1024x4096'] = _selection_seconds(device)
    result.update(ran=True, met=None, passed=not result['mismatches'])
    return result


def _selection_seconds(device: str) -> Dict[str, float]:
    """Median time of one selection on the GPU, ``topk`` (used) against ``kthvalue`` (pytorch/pytorch#75599)."""
    from snella_seg.snella import kernels
    flat = torch.randn(1024 * 4096, device=device).abs()
    k = kernels.zero_count(0.7, flat.numel())
    timings = {}
    for name, select in (('topk', lambda: kernels.kth_smallest_by_topk(flat, k)),
                         ('kthvalue', lambda: flat.kthvalue(k).values)):
        runs = []
        for _ in range(6):
            torch.cuda.synchronize()
            start = time.perf_counter()
            select()
            torch.cuda.synchronize()
            runs.append(time.perf_counter() - start)
        timings[name] = statistics.median(runs[1:])
    return timings


# ------------------------------------------------------------------------------------------------- 3. and 5. training
class StepCounter:
    """Host syncs and kernel launches of each step it is entered around (``measure_training``'s warm-up steps).

    On CUDA: ``torch.cuda.set_sync_debug_mode('warn')`` warnings, by the Python line that made them, leaving out the
    benchmark's own ``torch.cuda.synchronize`` around its timers; and the kernels (and copies, fills) that
    ``torch.profiler`` saw run on the GPU. On the CPU: ``DispatchCounter``'s host-syncing operators, by operator, and
    its launches. ``steps`` holds one count of syncs per step, ``launches`` one count of launches per step.
    """

    def __init__(self, device: str) -> None:
        self.device = device
        self.steps: List[Dict[str, int]] = []
        self.launches: List[int] = []

    @contextmanager
    def __call__(self) -> Iterator[None]:
        if _cuda(self.device):
            from torch.profiler import ProfilerActivity, profile
            with warnings.catch_warnings(record=True) as caught, profile(activities=[ProfilerActivity.CUDA]) as prof:
                warnings.simplefilter('always')
                torch.cuda.set_sync_debug_mode('warn')
                try:
                    yield
                finally:
                    torch.cuda.set_sync_debug_mode('default')
                    torch.cuda.synchronize()
            self.steps.append(dict(Counter(
                f'{"/".join(w.filename.split(os.sep)[-3:])}:{w.lineno}' for w in caught
                if 'synchroniz' in str(w.message) and not w.filename.endswith(osp.join('analysis', 'benchmark.py')))))
            self.launches.append(sum(1 for event in prof.events()
                                     if event.device_type == torch.autograd.DeviceType.CUDA))
        else:
            from dispatch_counter import DispatchCounter
            with DispatchCounter() as counter:
                yield
            self.steps.append(counter.syncs_by_operator())
            self.launches.append(counter.launches)


def _benchmark_args(part: str, device: str, tiny: bool, precision: str) -> argparse.Namespace:
    import benchmark
    config = TINY_ARCHS[part][1] if tiny else TRAINING_SETTINGS[part]['config']
    flags = ['--config', config, '--crop', str(TINY_CROP if tiny else CROP), '--batch', str(BATCH), '--warmup',
             str(WARMUP), '--iters', str(TINY_ITERS if tiny else ITERS), '--device', device]
    if PRECISIONS[precision]:
        flags += ['--amp', PRECISIONS[precision]]
    args = benchmark.build_parser().parse_args(flags)
    if tiny:
        args.arch, args.embed_dim, args.out_indices, args.head_channels = TINY_ARCHS[part][0], 64, (0, 1, 2, 3), 32
    return args


def _estimated_peak_mb(args: argparse.Namespace, method: str, precision: str) -> Tuple[float, str]:
    """The estimate written to docs/ ahead of time for this setting, else made now (tiny models: a second)."""
    import benchmark
    path = None if args.arch else ESTIMATE_FILES.get((args.config, precision))
    if path and osp.isfile(osp.join(REPO, path)):
        with open(osp.join(REPO, path)) as f:
            saved = json.load(f)
        settings = saved['settings']
        if (settings['crop'], settings['batch'], settings['rank']) == (args.crop, args.batch, args.rank):
            rows = {row['method']: row for row in saved['training']}
            if method in rows:
                return rows[method]['peak_memory_mb'], path
    estimate_args = argparse.Namespace(**dict(vars(args), device='cpu'))
    return benchmark.estimate_memory(estimate_args, method)['peak_memory_mb'], 'computed'


def measure_one_run(part: str, method: str, precision: str, device: str, tiny: bool) -> Dict:
    """One method at one precision (in a fresh process: peak memory belongs to it alone), with its estimate."""
    import benchmark
    args = _benchmark_args(part, device, tiny, precision)
    counter = StepCounter(device)
    if method == EAGER:
        from snella_seg.snella.fused_kernels import use_fused
        path = use_fused(False)
    else:
        path = contextlib.nullcontext()
    with path:
        row = dict(benchmark.measure_training(args, 'snella' if method == EAGER else method,
                                              warmup_step_context=counter), method=method)
        row.update(_update_host_time(part, method, precision, args))
    estimate, source = _estimated_peak_mb(args, 'snella' if method == EAGER else method, precision)
    row.update(precision=precision, host_syncs_per_step=sum(counter.steps[-1].values()),
               host_syncs_by_source=counter.steps[-1], launches_per_step=counter.launches[-1],
               launches_counted_by='torch.profiler CUDA events' if _cuda(device) else 'DispatchCounter',
               estimated_peak_mb=estimate, estimate_source=source,
               measured_over_estimated=row['peak_memory_mb'] / estimate if _cuda(device) else None)
    return row


def _update_host_time(part: str, method: str, precision: str, args: argparse.Namespace) -> Dict:
    """``benchmark.py --update-host-time``'s figure on the GPU, after a run whose adapted layers it stands for.

    SNELLA's tiny updates take the run's rank, so its Triton kernels are those the run compiled. Returns
    ``update_host_microseconds`` after the bf16 runs of SNELLA (either path) and LoRA in the training part on CUDA,
    else nothing.
    """
    if not _cuda(args.device) or part != 'training' or precision != 'bf16' or method not in UPDATE_HOST_METHODS:
        return {}
    import benchmark
    timed = benchmark.measure_update_host_time('lora' if method == 'lora' else 'snella', device=args.device,
                                               rank=args.rank)
    return {'update_host_microseconds': timed['microseconds_per_update']}


RUN_PREFIX = 'gpu_check run: '  # marks a worker's result lines among the logs mmengine prints to stdout


def _worker_command(part: str, runs: List[Tuple[str, str]], device: str, tiny: bool) -> List[str]:
    return [sys.executable, osp.abspath(__file__), 'training-run', '--part', part, '--device', device,
            '--runs', *[f'{method}:{precision}' for method, precision in runs]] + (['--tiny'] if tiny else [])


def _run_workers(part: str, runs: List[Tuple[str, str]], device: str, tiny: bool, timeout: float) -> List[Dict]:
    """``runs`` (method, precision) in one worker process, one JSON line each; an error or time-out marks them all."""
    failed = [{'method': method, 'precision': precision} for method, precision in runs]
    try:
        done = subprocess.run(_worker_command(part, runs, device, tiny), capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return [dict(run, error=f'timed out after {timeout:.0f} s') for run in failed]
    if done.returncode != 0:
        return [dict(run, error=done.stderr[-3000:]) for run in failed]
    rows = [json.loads(line[len(RUN_PREFIX):]) for line in done.stdout.splitlines() if line.startswith(RUN_PREFIX)]
    return rows + [dict(run, error='the worker printed no result') for run in failed[len(rows):]]


def _ratio(rows: Dict, key: str, numerator: str, denominator: str) -> Optional[float]:
    if numerator in rows and denominator in rows and rows[denominator].get(key) and key in rows[numerator]:
        return rows[numerator][key] / rows[denominator][key]
    return None


def read_targets(runs: List[Dict], device: str) -> Dict:
    """Each target of ``TARGETS``, and the estimate bound of every run that ran: figure, bound, met.

    Targets are read on a GPU only (a CPU's peaks are RSS, its times not a GPU's); a CPU rehearsal lists no target.

    Args:
        runs (List[Dict]): ``measure_one_run`` rows; those with an ``error`` or ``skipped`` do not count.
        device (str): where they ran.

    Returns:
        Dict: ``targets`` (name, figure, bound, met) and ``met`` (all met; None without a target).
    """
    if not _cuda(device):
        return {'targets': [], 'met': None, 'note': 'targets are read on a GPU only'}
    by_precision: Dict[str, Dict] = {}
    for run in runs:
        if 'error' not in run and 'skipped' not in run:
            by_precision.setdefault(run['precision'], {})[run['method']] = run
    targets = []
    for name, precision, key, reference, bound in TARGETS:  # a run that failed leaves its targets missed
        figure = _ratio(by_precision.get(precision, {}), key, 'snella', reference)
        targets.append({'name': name, 'figure': figure, 'bound': bound, 'met': figure is not None and figure <= bound})
    low, high = ESTIMATE_BOUNDS
    for rows in by_precision.values():
        for run in rows.values():
            figure = run['measured_over_estimated']
            targets.append({'name': f'{run["method"]}_{run["precision"]}_measured_over_estimated', 'figure': figure,
                            'bound': [low, high], 'met': low <= figure <= high})
    return {'targets': targets, 'met': all(t['met'] for t in targets) if targets else None}


def _fused_path_missing() -> Optional[str]:
    """Why this checkout cannot switch between SNELLA's fused and eager paths, or None where it can."""
    try:
        from snella_seg.snella import fused_kernels
    except ImportError:
        return 'no fused SNELLA path in this checkout (snella_seg/snella/fused_kernels.py): eager only'
    if not hasattr(fused_kernels, 'use_fused'):
        return 'snella_seg/snella/fused_kernels.py has no use_fused(enabled) switch'
    return None


def eager_against_fused(runs: List[Dict]) -> Dict:
    """SNELLA's bf16 step on the fused path (``snella``) beside the eager one (``EAGER``): seconds and launches.

    Args:
        runs (List[Dict]): ``measure_one_run`` rows of the training part.

    Returns:
        Dict: each path's ``step_seconds`` and ``launches_per_step`` and eager's ratio to fused; ``ran`` is False
        with a note where either run is missing (no GPU, no fused path, failed or skipped).
    """
    rows = {run['method']: run for run in runs if run.get('precision') == 'bf16' and 'error' not in run
            and 'skipped' not in run}
    if 'snella' not in rows or EAGER not in rows:
        return {'ran': False, 'note': 'the eager path is timed beside the fused one on a GPU with the fused path only'}
    paths = {'fused': rows['snella'], 'eager': rows[EAGER]}
    return {'ran': True, **{f'{name}_{key}': row.get(key) for name, row in paths.items()
                            for key in ('step_seconds', 'launches_per_step', 'update_host_microseconds')},
            'eager_over_fused_step': _ratio(rows, 'step_seconds', EAGER, 'snella'),
            'eager_over_fused_launches': _ratio(rows, 'launches_per_step', EAGER, 'snella'),
            'eager_over_fused_update_host': _ratio(rows, 'update_host_microseconds', EAGER, 'snella')}


def _fused_path_name(device: str) -> Optional[str]:
    """Where SNELLA's fused kernels run for this device: on the GPU, in Triton's interpreter (a CPU rehearsal with
    ``TRITON_INTERPRET=1``), or None (eager on both sides of the comparison)."""
    from snella_seg.snella import fused_kernels
    if _cuda(device):
        return 'cuda' if fused_kernels.fused_kernels_available(torch.zeros(1, device=device)) else None
    if os.environ.get('TRITON_INTERPRET') == '1':
        with fused_kernels.fused_kernels_forced():
            return 'triton interpreter' if fused_kernels.fused_kernels_available(torch.zeros(1)) else None
    return None


def _relative_difference(fused: torch.Tensor, eager: torch.Tensor) -> float:
    return float((fused.float() - eager.float()).abs().max() / eager.float().abs().max().clamp_min(1e-30))


def _layer_parity(layer_factory: Callable[[], torch.nn.Module], inputs: torch.Tensor, upstream: torch.Tensor,
                  fused_context: Callable[[], object]) -> Dict:
    """One training step of a fresh SNELLA layer on either path: outputs, the input's and every factor's gradient."""
    from snella_seg.snella import fused_kernels
    results = []
    for fused in (False, True):
        layer = layer_factory()
        x = inputs.clone().requires_grad_(True)
        with fused_kernels.use_fused(fused), fused_context() if fused else contextlib.nullcontext():
            out = layer(x)
            (out * upstream).sum().backward()
        results.append([('output', out.detach()), ('input grad', x.grad)]
                       + [(name, p.grad) for name, p in layer.named_parameters() if p.requires_grad])
    return {'largest_relative_difference': {name: _relative_difference(fused, eager)
                                            for (name, eager), (_, fused) in zip(*results)}}


def _trained_like(module: torch.nn.Module) -> torch.nn.Module:
    """Return ``module`` with normal random factors: a zero-initialised factor would make ΔW 0 on both paths."""
    with torch.no_grad():
        for factor in module.factor_parameters():
            factor.normal_()
    return module


def _fused_path_parity(device: str, tiny: bool) -> Dict:
    """SNELLA's fused path against eager, where ``snella_seg.snella.fused_kernels`` exists: ΔW alone, and a layer's
    training step (q, k and v in one layer for the square shape), with a verdict (``PARITY_BOUNDS``).

    On a CPU the fused kernels run only in Triton's interpreter (``TRITON_INTERPRET=1`` set for the check): it checks
    the kernels with the machine's own Triton version; otherwise both sides are eager's and the comparison only
    exercises the check.
    """
    missing = _fused_path_missing()
    if missing:
        return {'ran': False, 'note': missing}
    from snella_seg.snella import SNELLALinear, SparseKernelDelta, fused_kernels
    path = _fused_path_name(device)
    fused_context = fused_kernels.fused_kernels_forced if path == 'triton interpreter' else contextlib.nullcontext
    rank, tokens = (8, 16) if tiny else (32, 256)
    cases = []
    for in_features, out_features in (TINY_SELECTION_SHAPES if tiny else SELECTION_SHAPES):
        torch.manual_seed(0)
        delta = _trained_like(SparseKernelDelta(in_features, out_features, rank=rank, sparsity=0.7)).to(device)
        with torch.no_grad():
            with fused_kernels.use_fused(False):
                eager = delta.delta_weight().float()
            with fused_kernels.use_fused(True), fused_context():
                fused = delta.delta_weight().float()
        both = (eager != 0) & (fused != 0)
        case = {'shape': [in_features, out_features], 'max_abs_diff': float((eager - fused).abs().max()),
                'kept_by_both_relative_difference': _relative_difference(fused[both], eager[both]),
                'kept_set_differences': int(((eager != 0) != (fused != 0)).sum()), 'entries': eager.numel()}
        split = 3 if in_features == out_features else 1

        def layer_factory() -> torch.nn.Module:
            torch.manual_seed(1)
            return _trained_like(SNELLALinear(torch.nn.Linear(in_features, split * out_features), rank=rank,
                                              sparsity=0.7, split=split)).to(device)
        generator = torch.Generator().manual_seed(2)
        inputs = torch.randn(2, tokens, in_features, generator=generator).to(device)
        upstream = torch.randn(2, tokens, split * out_features, generator=generator).to(device)
        case.update(split=split, **_layer_parity(layer_factory, inputs, upstream, fused_context))
        cases.append(case)
    return dict(_parity_verdict(cases), ran=True, fused_path=path or 'unavailable: eager on both sides', cases=cases)


# The fused path agrees with eager when ΔW's entries kept by both differ by at most ``delta`` of the largest, at most
# ``kept_share`` of the entries are kept by one path only (they lie within rounding of the threshold), and a layer's
# outputs and gradients differ by at most ``step`` of their largest entry.
PARITY_BOUNDS = dict(delta=1e-4, kept_share=1e-3, step=1e-3)


def _parity_verdict(cases: List[Dict]) -> Dict:
    """``agrees`` and what broke it (``disagreements``), by ``PARITY_BOUNDS``."""
    disagreements = []
    for case in cases:
        shape = 'x'.join(map(str, case['shape']))
        if case['kept_by_both_relative_difference'] > PARITY_BOUNDS['delta']:
            disagreements.append(f'{shape}: ΔW differs by {case["kept_by_both_relative_difference"]:.2e}')
        if case['kept_set_differences'] > PARITY_BOUNDS['kept_share'] * case['entries']:
            disagreements.append(f'{shape}: {case["kept_set_differences"]} entries kept by one path only')
        disagreements += [f'{shape}: {name} differs by {value:.2e}'
                          for name, value in case['largest_relative_difference'].items()
                          if not value <= PARITY_BOUNDS['step']]
    return {'agrees': not disagreements, 'disagreements': disagreements, 'bounds': PARITY_BOUNDS}


def _runs_in_order(methods, tiny: bool, with_eager: bool = False) -> List[List[Tuple[str, str]]]:
    """bf16 (the targets') first, then fp32; a fresh process per run on a GPU, so that each peak is its own; tiny
    runs share one process per precision (CPU peaks are RSS anyway). ``with_eager`` adds SNELLA's eager path in
    bf16, after the runs the targets read."""
    groups = []
    for precision in ('bf16', 'fp32'):
        planned = [(method, precision) for method in methods]
        if with_eager and precision == 'bf16':
            planned.append((EAGER, precision))
        groups += [planned] if tiny else [[run] for run in planned]
    return groups


def check_training(device: str, tiny: bool, budget: float, part: str = 'training',
                   report: Callable[[Dict], None] = lambda result: None) -> Dict:
    """Every method of ``part`` in bf16, then in fp32, each reported as soon as it ends; a run that the time left
    cannot hold (judged by the longest run so far) is skipped with a note."""
    deadline = time.monotonic() + budget
    methods = TRAINING_SETTINGS[part]['methods']
    runs: List[Dict] = []
    result = {'setting': {'config': TINY_ARCHS[part][1] if tiny else TRAINING_SETTINGS[part]['config'],
                          'tiny': tiny, 'crop': TINY_CROP if tiny else CROP, 'batch': BATCH, 'warmup': WARMUP,
                          'iters': TINY_ITERS if tiny else ITERS}, 'runs': runs}
    longest = 5.0
    with_eager = part == 'training' and _cuda(device) and _fused_path_missing() is None
    for group in _runs_in_order(methods, tiny, with_eager):
        left = deadline - time.monotonic()
        if left < longest:
            runs.extend({'method': method, 'precision': precision, 'skipped': 'no time left in the budget'}
                        for method, precision in group)
            continue
        started = time.monotonic()
        runs.extend(_run_workers(part, group, device, tiny, left))
        longest = max(longest, (time.monotonic() - started) / len(group))
        report(dict(result, passed=None, ran=False))
    if part == 'training':
        try:
            parity = _fused_path_parity(device, tiny)
        except Exception as error:  # the runs above stay in the part's JSON; the part fails on the parity alone
            parity = {'ran': False, 'agrees': False, 'error': f'{type(error).__name__}: {error}'}
        result['fused_vs_eager'] = dict(parity, step=eager_against_fused(runs))
    result.update(read_targets(runs, device))
    result['launches_vs_lora'] = {precision: _ratio({r['method']: r for r in runs if r.get('precision') == precision
                                                     and 'launches_per_step' in r}, 'launches_per_step', 'snella',
                                                    'lora') for precision in ('bf16', 'fp32')}
    result['ran'] = bool(runs) and all('error' not in run and 'skipped' not in run for run in runs)
    result['passed'] = (result['ran'] and result['met'] is not False
                        and result.get('fused_vs_eager', {}).get('agrees') is not False)
    return result


def check_sam(device: str, tiny: bool, budget: float, report: Callable[[Dict], None] = lambda result: None) -> Dict:
    """Part 3 for SAM-L (LoRA and SNELLA), in the time the check has left."""
    if budget < 30:
        return {'passed': None, 'ran': False, 'met': None,
                'skipped': f'{budget:.0f} s left of the check\'s time: SAM-L not run'}
    return check_training(device, tiny, budget, part='sam', report=report)


# ------------------------------------------------------------------------------------------------------- 4. runner
def _leaves(node, path: str = '') -> Iterator[Tuple[str, object]]:
    """Tensors and numbers of a checkpoint by path, ``UNCOMPARED_ENTRIES`` left out."""
    if isinstance(node, (torch.Tensor, int, float)):  # bool is an int
        yield path, node
    elif isinstance(node, dict):
        for key, value in node.items():
            if not (path == '' and key in UNCOMPARED_ENTRIES):
                yield from _leaves(value, f'{path}.{key}' if path else str(key))
    elif isinstance(node, (list, tuple)):
        for index, value in enumerate(node):
            yield from _leaves(value, f'{path}[{index}]')


def _is_float(value) -> bool:
    return value.is_floating_point() if isinstance(value, torch.Tensor) else isinstance(value, float)


def _largest_difference(a, b) -> float:
    if isinstance(a, torch.Tensor):
        return float((a.double() - b.double()).abs().max()) if a.numel() else 0.0
    return abs(a - b)


def compare_checkpoints(expected_path: str, actual_path: str) -> Dict:
    """Every tensor and number of two checkpoints (weights, optimizer, schedulers, allocator, RNG states).

    Args:
        expected_path (str): the reference checkpoint.
        actual_path (str): the one compared with it.

    Returns:
        Dict: ``tensors`` (entries compared), ``identical``; ``exact_differing``: integer and bool entries (RNG
        states, counters, masks) that differ, or entries whose shape or dtype differ; ``float_differences``: the
        largest difference of each float entry that differs; ``missing``: entries in one only; ``max_abs_diff``.
    """
    from snella_seg.utils.checkpoint_loading import load_checkpoint_safely
    expected = dict(_leaves(load_checkpoint_safely(expected_path)))
    actual = dict(_leaves(load_checkpoint_safely(actual_path)))
    exact_differing, float_differences = [], {}
    for name in sorted(expected.keys() & actual.keys()):
        a, b = expected[name], actual[name]
        if isinstance(a, torch.Tensor) != isinstance(b, torch.Tensor) or _is_float(a) != _is_float(b):
            exact_differing.append(name)
        elif isinstance(a, torch.Tensor) and (a.shape != b.shape or a.dtype != b.dtype):
            exact_differing.append(name)
        elif not (torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b):
            if _is_float(a):
                float_differences[name] = _largest_difference(a, b)
            else:
                exact_differing.append(name)
    missing = sorted(expected.keys() ^ actual.keys())
    return {'tensors': len(expected), 'identical': not exact_differing and not float_differences and not missing,
            'exact_differing': exact_differing[:20], 'exact_differing_count': len(exact_differing),
            'float_differences': float_differences, 'missing': missing[:20],
            'max_abs_diff': max(float_differences.values(), default=0.0)}


def _train_command(work_dir: str, data_root: str, precision: str, iters: int,
                   resume: bool = False) -> List[str]:
    """tools/train.py on the demo config with the wrapper ``--amp`` builds on a GPU, its dtype given explicitly
    (fp16: dynamic loss scaling with the skipped-step guard)."""
    wrapper = ['optim_wrapper.type=GuardedAmpOptimWrapper', f'optim_wrapper.dtype={PRECISIONS[precision]}']
    options = [f'{loader}.dataset.data_root={data_root}' for loader in ('train_dataloader', 'val_dataloader',
                                                                        'test_dataloader')]
    options += [f'train_cfg.max_iters={iters}', f'train_cfg.val_interval={iters}', 'randomness.seed=0',
                f'default_hooks.checkpoint.interval={iters // 2}', 'default_hooks.checkpoint.max_keep_ckpts=2',
                f'default_hooks.logger.interval={max(1, iters // 3)}'] + wrapper
    return ([sys.executable, 'tools/train.py', DEMO_CONFIG, '--work-dir', work_dir] + (['--resume'] if resume else [])
            + ['--cfg-options'] + options)


def _run_tool(command: List[str], env: Dict, timeout: float) -> str:
    done = subprocess.run(command, capture_output=True, text=True, timeout=max(1.0, timeout), cwd=REPO, env=env)
    if done.returncode != 0:
        raise RuntimeError(f'{" ".join(command[1:3])} failed:\n{done.stderr[-3000:]}')
    return done.stdout + done.stderr


def _runner_round(precision: str, device: str, iters: int, data_root: str, root: str, deadline: float) -> Dict:
    """Uninterrupted run, resume from its halfway checkpoint in a fresh work dir, comparison, tools/test.py."""
    env = dict(os.environ) if _cuda(device) else dict(os.environ, CUDA_VISIBLE_DEVICES='')
    start = time.monotonic()
    uninterrupted, resumed = osp.join(root, f'{precision}_uninterrupted'), osp.join(root, f'{precision}_resumed')
    _run_tool(_train_command(uninterrupted, data_root, precision, iters), env, deadline - time.monotonic())
    os.makedirs(resumed)
    halfway = osp.join(resumed, f'iter_{iters // 2}.pth')
    shutil.copy(osp.join(uninterrupted, f'iter_{iters // 2}.pth'), halfway)
    with open(osp.join(resumed, 'last_checkpoint'), 'w') as f:
        f.write(halfway)
    _run_tool(_train_command(resumed, data_root, precision, iters, resume=True), env,
              deadline - time.monotonic())
    final = f'iter_{iters}.pth'
    result = {'precision': precision, 'resume': compare_checkpoints(osp.join(uninterrupted, final),
                                                                    osp.join(resumed, final))}
    if not result['resume']['identical']:
        # how far two uninterrupted runs drift apart on this device: the floor a resume is judged against
        repeat = osp.join(root, f'{precision}_repeat')
        _run_tool(_train_command(repeat, data_root, precision, iters), env, deadline - time.monotonic())
        result['repeat'] = compare_checkpoints(osp.join(uninterrupted, final), osp.join(repeat, final))
    output = _run_tool([sys.executable, 'tools/test.py', DEMO_CONFIG, osp.join(uninterrupted, final), '--work-dir',
                        osp.join(root, f'{precision}_test'), '--cfg-options',
                        f'test_dataloader.dataset.data_root={data_root}'], env, deadline - time.monotonic())
    found = re.findall(r'mIoU: (\d+(?:\.\d+)?)', output)
    result.update(miou=float(found[-1]) if found else None, seconds=time.monotonic() - start)
    result['resumed_faithfully'] = resumed_faithfully(result['resume'], result.get('repeat'))
    result['passed'] = result['miou'] is not None and result['resumed_faithfully']
    return result


def resumed_faithfully(resume: Dict, repeat: Optional[Dict]) -> bool:
    """Whether a resumed run ended as the uninterrupted one: identical; or, where two uninterrupted runs differ too
    (nondeterministic kernels), every integer, bool, RNG and allocator entry equal and each float tensor within
    ``RESUME_NOISE_FACTOR`` times that tensor's own difference between the two uninterrupted runs.

    Args:
        resume (Dict): ``compare_checkpoints`` of the uninterrupted and the resumed run.
        repeat (Dict, optional): ``compare_checkpoints`` of the uninterrupted run and a repeat of it.

    Returns:
        bool: True if the resume lost nothing.
    """
    if resume['identical']:
        return True
    if resume['missing'] or resume['exact_differing_count'] or repeat is None:
        return False
    noise = repeat['float_differences']
    return all(difference <= RESUME_NOISE_FACTOR * noise.get(name, 0.0)
               for name, difference in resume['float_differences'].items())


def check_runner(device: str, tiny: bool, budget: float, report: Callable[[Dict], None] = lambda result: None) -> Dict:
    """The demo config through tools/train.py and tools/test.py in bf16 and fp16 autocast, in parallel on a GPU (a
    tiny model leaves it idle); bf16 alone on the CPU."""
    from snella_seg.datasets.demo_data import make_ade20k_like
    deadline = time.monotonic() + budget
    iters = TINY_RUNNER_ITERS if tiny else RUNNER_ITERS
    precisions = ['bf16', 'fp16'] if _cuda(device) else ['bf16']
    result: Dict = {'config': DEMO_CONFIG, 'iters': iters, 'checkpoint_at': iters // 2, 'rounds': []}
    if not _cuda(device):
        result['note'] = ('fp16 runs on CUDA only: its point is dynamic loss scaling on a GPU, which a '
                          "CPU's fp16 autocast does not exercise")
    root = tempfile.mkdtemp(prefix='gpu_check_runner_')
    try:
        data_root = make_ade20k_like(osp.join(root, 'data'), num_train=8 if tiny else 16, num_val=4 if tiny else 8)

        def one_round(precision: str) -> Dict:
            try:
                return _runner_round(precision, device, iters, data_root, root, deadline)
            except (RuntimeError, subprocess.TimeoutExpired) as error:
                return {'precision': precision, 'passed': False, 'error': str(error)[-3000:]}
        with ThreadPoolExecutor(max_workers=len(precisions) if _cuda(device) else 1) as pool:
            for round_result in pool.map(one_round, precisions):
                result['rounds'].append(round_result)
                report(dict(result, passed=None, ran=False))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    result.update(ran=bool(result['rounds']) and all('error' not in r for r in result['rounds']), met=None)
    result['passed'] = result['ran'] and all(r['passed'] for r in result['rounds'])
    return result


# ---------------------------------------------------------------------------------------------------------- command
def _write(out_dir: str, part: str, result: Dict) -> str:
    path = osp.join(out_dir, f'{PARTS.index(part) + 1}_{part}.json')
    with open(path + '.tmp', 'w') as f:
        json.dump(dict(result, part=part), f, indent=1)
    os.replace(path + '.tmp', path)
    return path


def run_part(part: str, out_dir: str, device: str, tiny: bool, budget: float) -> Dict:
    """Run one part and write its JSON (partial results of the long parts as they come)."""
    os.makedirs(out_dir, exist_ok=True)

    def report(partial: Dict) -> None:
        _write(out_dir, part, partial)
    start = time.monotonic()
    try:
        if part in ('environment', 'selection'):
            result = {'environment': check_environment, 'selection': check_selection}[part](device, tiny, budget)
        elif part == 'training':
            result = check_training(device, tiny, budget, report=report)
        elif part == 'runner':
            result = check_runner(device, tiny, budget, report=report)
        else:
            result = check_sam(device, tiny, budget, report=report)
    except Exception as error:  # the part failed: say so in its JSON, the other parts go on
        result = {'passed': False, 'ran': False, 'met': None, 'error': f'{type(error).__name__}: {error}'}
    result.update(device=device, tiny=tiny, seconds=time.monotonic() - start)
    _write(out_dir, part, result)
    return result


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description='One part of the GPU check (tools/analysis/gpu_check.sh runs all)')
    parser.add_argument('part', choices=PARTS + ('training-run',))
    parser.add_argument('--out', help='folder receiving <n>_<part>.json')
    parser.add_argument('--device', default='cuda', help="'cuda' or 'cpu'")
    parser.add_argument('--tiny', action='store_true', help='tiny models and runs: a CPU rehearsal')
    parser.add_argument('--budget', type=float, default=600, help='seconds this part may take')
    parser.add_argument('--part', dest='run_part', choices=tuple(TRAINING_SETTINGS), help=argparse.SUPPRESS)
    parser.add_argument('--runs', nargs='+', help=argparse.SUPPRESS)  # method:precision
    return parser


def main(argv: Optional[List[str]] = None) -> Dict:
    args = build_parser().parse_args(argv)
    if args.part == 'training-run':  # a worker of check_training: one JSON line per run for the parent
        rows = []
        for run in args.runs:
            method, precision = run.split(':')
            rows.append(measure_one_run(args.run_part, method, precision, args.device, args.tiny))
            print(RUN_PREFIX + json.dumps(rows[-1]), flush=True)
        return {'runs': rows}
    if not args.out:
        raise SystemExit(f'{args.part}: --out FOLDER is needed to write {args.part}.json')
    result = run_part(args.part, args.out, args.device, args.tiny, args.budget)
    targets = result.get('targets', [])
    print(f'{args.part}: {"passed" if result["passed"] else "skipped" if result["passed"] is None else "FAILED"}'
          f' in {result["seconds"]:.0f} s; {"ran" if result.get("ran") else "did not run to its end"}; '
          f'{sum(bool(t["met"]) for t in targets)} of {len(targets)} targets met')
    return result


if __name__ == '__main__':
    main()
