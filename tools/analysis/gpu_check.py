"""The GPU check of ``tools/analysis/gpu_check.sh``: what a lent GPU machine has to show, part by part.

A lent machine is bare and lent for minutes, so each part runs in its own process under its own time limit and
writes its own JSON as soon as it ends (a part that fails or runs out of time loses only itself):

1. ``environment``: GPU, driver, torch/CUDA versions, bf16 support.
2. ``selection``: SNELLA's CUDA selection (``topk``) against the CPU's on the same matrices: exact thresholds and
   kept counts. On the CPU: ``kth_smallest_by_topk`` and the sampled selection against ``kthvalue``.
3. ``training``: ViT-L, 512x512, batch 2, LoRA, SNELLA and full fine-tuning in fp32 and bf16 autocast: peak memory
   beside its estimate (``estimate_memory``), median step time, host syncs per step.
4. ``runner``: the demo config through ``tools/train.py`` on generated data with fp16 and bf16 autocast, a
   checkpoint halfway, a resume that ends identical to an uninterrupted run, and ``tools/test.py``'s mIoU.
5. ``sam``: part 3 for SAM-L, LoRA and SNELLA, with whatever time is left.

``--tiny`` shrinks every model and run so that a CPU rehearses the whole check in a few minutes
(``--device cpu --tiny``, as tests/tools/analysis/test_gpu_check_rehearsal.py does).
"""
import argparse
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
CROP, BATCH, WARMUP, ITERS = 512, 2, 2, 5
TINY_CROP, TINY_ITERS = 32, 3
# Estimates made on the CPU ahead of time (benchmark.py --estimate-memory [--amp bfloat16]), read rather than redone
# on a lent machine: the file of a config name and precision.
ESTIMATE_FILES = {('configs/snella_vit-l_ade20k.py', 'fp32'): 'docs/benchmark_vit-l_512_b2_estimated-gpu.json',
                  ('configs/snella_vit-l_ade20k.py', 'bf16'): 'docs/benchmark_vit-l_512_b2_estimated-gpu-bf16.json',
                  ('configs/snella_sam-l_ade20k.py', 'fp32'): 'docs/benchmark_sam-l_512_b2_estimated-gpu.json',
                  ('configs/snella_sam-l_ade20k.py', 'bf16'): 'docs/benchmark_sam-l_512_b2_estimated-gpu-bf16.json'}
# What the GPU run (ViT-L 512, batch 2) should show: SNELLA's memory and bf16 step time against LoRA's and full
# fine-tuning's, and the measured peak memory against its estimate.
TARGETS = {'snella_memory_vs_lora': 0.90, 'snella_memory_vs_full': 0.70, 'snella_bf16_time_vs_lora': 1.15,
           'measured_over_estimated': (0.9, 1.5)}

DEMO_CONFIG = 'configs/demo/snella_vit-tiny_demo-ade20k.py'
RUNNER_ITERS, TINY_RUNNER_ITERS = 30, 6
# A resumed run differing from the uninterrupted one by more than this many times two uninterrupted runs differ
# from each other (a GPU's atomics make runs differ) is a resume that lost state.
RESUME_NOISE_FACTOR = 10.0


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
    return result


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
    result['passed'] = not result['mismatches']
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
class HostSyncCounter:
    """Host syncs of each step it is entered around (``measure_training``'s warm-up steps), by where they happen.

    On CUDA: ``torch.cuda.set_sync_debug_mode('warn')`` warnings, by the Python line that made them, leaving out the
    benchmark's own ``torch.cuda.synchronize`` around its timers. On the CPU: ``DispatchCounter``'s host-syncing
    operators, by operator. ``steps`` holds one such count per step.
    """

    def __init__(self, device: str) -> None:
        self.device = device
        self.steps: List[Dict[str, int]] = []

    @contextmanager
    def __call__(self) -> Iterator[None]:
        if _cuda(self.device):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter('always')
                torch.cuda.set_sync_debug_mode('warn')
                try:
                    yield
                finally:
                    torch.cuda.set_sync_debug_mode('default')
            self.steps.append(dict(Counter(
                f'{"/".join(w.filename.split(os.sep)[-3:])}:{w.lineno}' for w in caught
                if 'synchroniz' in str(w.message) and not w.filename.endswith(osp.join('analysis', 'benchmark.py')))))
        else:
            from dispatch_counter import DispatchCounter
            with DispatchCounter() as counter:
                yield
            self.steps.append(counter.syncs_by_operator())


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
    syncs = HostSyncCounter(device)
    row = benchmark.measure_training(args, method, warmup_step_context=syncs)
    estimate, source = _estimated_peak_mb(args, method, precision)
    row.update(precision=precision, host_syncs_per_step=sum(syncs.steps[-1].values()),
               host_syncs_by_source=syncs.steps[-1], estimated_peak_mb=estimate, estimate_source=source,
               measured_over_estimated=row['peak_memory_mb'] / estimate if _cuda(device) else None)
    return row


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
    if numerator in rows and denominator in rows and rows[denominator][key]:
        return rows[numerator][key] / rows[denominator][key]
    return None


def _target_readings(runs: List[Dict], device: str) -> Dict:
    """The targets against the measurements (GPU only: CPU peaks are RSS, its times not a GPU's)."""
    if not _cuda(device):
        return {'note': 'targets are read on a GPU only'}
    by_precision: Dict[str, Dict] = {}
    for run in runs:
        if 'error' not in run and 'skipped' not in run:
            by_precision.setdefault(run['precision'], {})[run['method']] = run
    fp32, bf16 = by_precision.get('fp32', {}), by_precision.get('bf16', {})
    readings = {'snella_memory_vs_lora': _ratio(fp32, 'peak_memory_mb', 'snella', 'lora'),
                'snella_memory_vs_full': _ratio(fp32, 'peak_memory_mb', 'snella', 'full'),
                'snella_bf16_time_vs_lora': _ratio(bf16, 'step_seconds', 'snella', 'lora'),
                'measured_over_estimated': {f'{r["method"]} {r["precision"]}': r['measured_over_estimated']
                                            for rows in by_precision.values() for r in rows.values()}}
    low, high = TARGETS['measured_over_estimated']
    met = {key: readings[key] is not None and readings[key] <= TARGETS[key]
           for key in ('snella_memory_vs_lora', 'snella_memory_vs_full', 'snella_bf16_time_vs_lora')}
    met['measured_over_estimated'] = bool(readings['measured_over_estimated']) and all(
        low <= ratio <= high for ratio in readings['measured_over_estimated'].values())
    return {'targets': TARGETS, 'readings': readings, 'met': met}


def check_training(device: str, tiny: bool, budget: float, part: str = 'training',
                   report: Callable[[Dict], None] = lambda result: None) -> Dict:
    """Every method and precision of ``part`` in its own process, each reported as soon as it ends; runs that the
    time left cannot hold are skipped with a note."""
    deadline = time.monotonic() + budget
    methods = TRAINING_SETTINGS[part]['methods']
    runs: List[Dict] = []
    result = {'setting': {'config': TINY_ARCHS[part][1] if tiny else TRAINING_SETTINGS[part]['config'],
                          'tiny': tiny, 'crop': TINY_CROP if tiny else CROP, 'batch': BATCH, 'warmup': WARMUP,
                          'iters': TINY_ITERS if tiny else ITERS}, 'runs': runs}
    planned = [(method, precision) for precision in ('fp32', 'bf16') for method in methods]
    # a fresh process per run on a GPU, so that each peak is its own; tiny runs share one (CPU peaks are RSS anyway)
    groups = [planned] if tiny else [[run] for run in planned]
    for group in groups:
        left = deadline - time.monotonic()
        if left < 5:
            runs.extend({'method': method, 'precision': precision, 'skipped': 'no time left in the budget'}
                        for method, precision in group)
            continue
        runs.extend(_run_workers(part, group, device, tiny, left))
        report(dict(result, passed=None))
    result['readings'] = _target_readings(runs, device)
    ran = [run for run in runs if 'skipped' not in run]
    result['passed'] = bool(ran) and all('error' not in run for run in ran)
    return result


def check_sam(device: str, tiny: bool, budget: float, report: Callable[[Dict], None] = lambda result: None) -> Dict:
    """Part 3 for SAM-L (LoRA and SNELLA), in the time the check has left."""
    if budget < 30:
        return {'passed': None, 'skipped': f'{budget:.0f} s left of the check\'s time: SAM-L not run'}
    return check_training(device, tiny, budget, part='sam', report=report)


# ------------------------------------------------------------------------------------------------------- 4. runner
def _tensors(node, path: str = '') -> Iterator[Tuple[str, torch.Tensor]]:
    if isinstance(node, torch.Tensor):
        yield path, node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from _tensors(value, f'{path}.{key}' if path else str(key))
    elif isinstance(node, (list, tuple)):
        for index, value in enumerate(node):
            yield from _tensors(value, f'{path}[{index}]')


def compare_checkpoints(expected_path: str, actual_path: str) -> Dict:
    """Every tensor of two checkpoints (weights, optimizer, schedulers, allocator, RNG states): identical or not,
    and the largest difference."""
    from snella_seg.utils.checkpoint_loading import load_checkpoint_safely
    expected = dict(_tensors(load_checkpoint_safely(expected_path)))
    actual = dict(_tensors(load_checkpoint_safely(actual_path)))
    differing, largest = [], 0.0
    for name in sorted(expected.keys() & actual.keys()):
        a, b = expected[name], actual[name]
        if a.shape != b.shape or a.dtype != b.dtype:
            differing.append(name)
        elif not torch.equal(a, b):
            differing.append(name)
            if a.is_floating_point():
                largest = max(largest, float((a.double() - b.double()).abs().max()))
    missing = sorted(expected.keys() ^ actual.keys())
    return {'tensors': len(expected), 'identical': not differing and not missing, 'differing': differing[:20],
            'differing_count': len(differing), 'missing': missing[:20], 'max_abs_diff': largest}


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
    result['passed'] = result['miou'] is not None and _resumed_faithfully(result)
    return result


def _resumed_faithfully(result: Dict) -> bool:
    """Identical; or, where two uninterrupted runs differ too (nondeterministic kernels), within their noise."""
    if result['resume']['identical']:
        return True
    repeat = result.get('repeat')
    if repeat is None or repeat['identical'] or result['resume']['missing']:
        return False
    return result['resume']['max_abs_diff'] <= RESUME_NOISE_FACTOR * repeat['max_abs_diff']


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
                report(dict(result, passed=None))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    result['passed'] = all(r['passed'] for r in result['rounds'])
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
        result = {'passed': False, 'error': f'{type(error).__name__}: {error}'}
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
    print(f'{args.part}: {"passed" if result["passed"] else "skipped" if result["passed"] is None else "FAILED"}'
          f' in {result["seconds"]:.0f} s')
    return result


if __name__ == '__main__':
    main()
