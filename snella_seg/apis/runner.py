"""Library functions behind ``tools/train.py`` and ``tools/test.py``: mmseg's conventions, plus CPU launchers."""
import os
import os.path as osp
import re
import shutil
import subprocess
from typing import List, Optional

import torch
import torch.distributed as torch_dist
from mmengine.config import Config
from mmengine.runner import Runner

from ..datasets import check_config_datasets
from ..datasets.config_checks import TEST_LOADERS
from ..engine.hooks import RankZeroBuffersHook
from .console import QuietConsoleRunner
from .weights import check_pretrained_files


def load_config(config: str, work_dir: Optional[str] = None, cfg_options: Optional[dict] = None,
                launcher: str = 'none') -> Config:
    """Read a config, apply ``--cfg-options`` and choose the work dir (``./work_dirs/<config name>`` default).

    Only reads: ``train`` and ``test`` launch the processes (``launch_on_cpu_processes``).

    Args:
        config: path of the config file.
        work_dir: work dir that overrides the config's.
        cfg_options: ``--cfg-options`` (a DictAction dict) merged into the config.
        launcher: the job launcher (``'none'``, ``'pytorch'``, ...), stored as ``cfg.launcher``.

    Returns:
        The config, ready for ``train`` or ``test``.

    Raises:
        FileNotFoundError: ``config`` does not exist.
    """
    if not osp.isfile(config):
        raise FileNotFoundError(f'config file {config!r} does not exist; the configs live in configs/, '
                                'e.g. configs/snella_vit-b_ade20k.py')
    cfg = Config.fromfile(config)
    cfg.launcher = launcher
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(config))[0])
    return cfg


def _replace_sync_bn(node):
    """Return the config tree ``node`` with SyncBN as BN: SyncBN needs CUDA, BN is it without cross-rank statistics."""
    if isinstance(node, dict):
        return {k: ('BN' if k == 'type' and v == 'SyncBN' else _replace_sync_bn(v)) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return type(node)(_replace_sync_bn(v) for v in node)
    return node


def _on_cpu_processes(cfg: Config) -> bool:
    """Return whether this is a ``torchrun`` launch on a machine without CUDA, which mmengine does not handle."""
    return cfg.get('launcher', 'none') != 'none' and not torch.cuda.is_available()


def start_cpu_process_group(cfg: Config) -> None:
    """Start the gloo process group of a CPU-only ``torchrun`` launch (no-op otherwise).

    mmengine's launcher calls ``torch.cuda.set_device``; an already initialised gloo group makes it skip that.

    Args:
        cfg: the run's config; its ``launcher`` says whether this is a distributed launch.
    """
    if _on_cpu_processes(cfg) and not torch_dist.is_initialized():
        torch_dist.init_process_group(backend='gloo', rank=int(os.environ['RANK']),
                                      world_size=int(os.environ['WORLD_SIZE']))


def adapt_config_to_cpu_processes(cfg: Config) -> None:
    """Make a config run under a CPU-only ``torchrun`` launch (no-op otherwise): gloo, DDP without device ids, BN.

    DDP on CPU modules needs ``device_ids=None`` and refuses SyncBN, so the plain BN that replaces it keeps running
    statistics per rank. They never affect training (BN normalises training batches with their own statistics), but
    validation runs on every rank through ``val_step``, which bypasses DDP's forward and so any DDP buffer sync:
    RankZeroBuffersHook gives every rank rank 0's buffers, the checkpoint's, before each validation.
    ``broadcast_buffers`` stays False (mmengine's default): True would only re-send rank 0's buffers before every
    training forward, which leaves rank 0's statistics as they are and the other ranks one batch off at validation.

    Args:
        cfg: the run's config, edited in place.
    """
    if not _on_cpu_processes(cfg):
        return
    cfg.env_cfg = dict(cfg.get('env_cfg', {}), dist_cfg=dict(backend='gloo'))
    wrapper = dict(cfg.get('model_wrapper_cfg') or {})
    wrapper.update(type=wrapper.get('type', 'MMDistributedDataParallel'), device_ids=None)
    wrapper.setdefault('broadcast_buffers', False)
    wrapper.setdefault('find_unused_parameters', cfg.get('find_unused_parameters', False))
    cfg.model_wrapper_cfg = wrapper
    cfg.model = _replace_sync_bn(cfg.model.to_dict() if hasattr(cfg.model, 'to_dict') else cfg.model)
    hooks = list(cfg.get('custom_hooks') or [])
    if not any(hook.get('type') == RankZeroBuffersHook.__name__ for hook in hooks):
        cfg.custom_hooks = hooks + [dict(type=RankZeroBuffersHook.__name__)]


def launch_on_cpu_processes(cfg: Config) -> None:
    """Before a Runner is built: on a CPU-only ``torchrun`` launch, start gloo and adapt the config to it.

    Args:
        cfg: the run's config, edited in place.
    """
    start_cpu_process_group(cfg)
    adapt_config_to_cpu_processes(cfg)


def _end_distributed_run(cfg: Config) -> None:
    """Tear the launch's process group down while every rank is still alive.

    Left to interpreter exit, a rank's gloo threads can outlive a peer that already exited and abort it
    (``terminate called without an active exception``, SIGABRT), failing a run that finished.
    """
    if cfg.get('launcher', 'none') == 'none' or not torch_dist.is_initialized():
        return
    torch_dist.barrier()
    torch_dist.destroy_process_group()


def enable_amp(cfg: Config) -> None:
    """Switch the config's optimizer wrapper to mixed precision (``--amp``).

    On CUDA ``GuardedAmpOptimWrapper`` (bf16 where the GPU has it, else fp16 with loss scaling that stops a diverged
    run; the log says which), bf16 autocast on CPU.

    Args:
        cfg: the run's config; its ``optim_wrapper`` is edited in place.

    Raises:
        ValueError: the config's optimizer wrapper is a type that mixed precision cannot replace.
    """
    wrapper = cfg.optim_wrapper
    amp_types = ('OptimWrapper', 'AmpOptimWrapper', 'CPUAmpOptimWrapper', 'GuardedAmpOptimWrapper')
    if wrapper.get('type', 'OptimWrapper') not in amp_types:
        raise ValueError(f'--amp cannot combine with optim_wrapper type {wrapper.type!r}')
    if torch.cuda.is_available():
        wrapper.type = 'GuardedAmpOptimWrapper'
        wrapper.setdefault('loss_scale', 'dynamic')
    else:
        wrapper.type = 'CPUAmpOptimWrapper'


NVIDIA_PROC_DIR = '/proc/driver/nvidia'  # the loaded NVIDIA kernel module's folder
# The oldest Linux NVIDIA driver that runs each CUDA major version's builds (CUDA minor version compatibility).
MIN_DRIVER_FOR_CUDA = {'11': '450.80.02', '12': '525.60.13', '13': '580.65.06'}


def _visible_gpu_signs() -> List[str]:
    """Return what says this machine has NVIDIA GPUs, unless ``CUDA_VISIBLE_DEVICES`` hides them on purpose."""
    visible = os.environ.get('CUDA_VISIBLE_DEVICES')
    if visible is not None and visible.strip() in ('', '-1'):
        return []
    signs = [f'CUDA_VISIBLE_DEVICES={visible!r}'] if visible is not None else []
    if shutil.which('nvidia-smi'):
        signs.append('nvidia-smi is on PATH')
    if osp.isdir(NVIDIA_PROC_DIR):
        signs.append(f'{NVIDIA_PROC_DIR} exists')
    return signs


def _nvidia_driver_version() -> Optional[str]:
    """Return the NVIDIA driver version from ``nvidia-smi`` or ``/proc/driver/nvidia/version``; None if neither says."""
    nvidia_smi = shutil.which('nvidia-smi')
    if nvidia_smi:
        try:
            result = subprocess.run([nvidia_smi, '--query-gpu=driver_version', '--format=csv,noheader'],
                                    capture_output=True, text=True, timeout=20)
            versions = result.stdout.split()
            if result.returncode == 0 and versions:
                return versions[0]
        except (OSError, subprocess.SubprocessError):
            pass
    try:
        with open(osp.join(NVIDIA_PROC_DIR, 'version')) as f:
            match = re.search(r'Kernel Module.*?\s(\d+\.\d+(?:\.\d+)?)\b', f.read())
    except OSError:
        return None
    return match.group(1) if match else None


def check_gpus_usable() -> None:
    """Refuse to run on the CPU when the machine shows NVIDIA GPUs that torch cannot use.

    A torch wheel built for a newer CUDA than the driver supports (or a CPU-only wheel) reports no CUDA, and the
    run would otherwise fall back to the CPU (gloo, plain BN, CPU autocast) without a word.

    Raises:
        RuntimeError: GPUs are visible but torch cannot use CUDA; the message says why (driver, wheel or device
            access) and what to do.
    """
    signs = _visible_gpu_signs()
    if not signs or torch.cuda.is_available():
        return
    driver = _nvidia_driver_version()
    driver_text = (f'NVIDIA driver {driver}' if driver else
                   f'driver version unknown: neither nvidia-smi nor {NVIDIA_PROC_DIR}/version reported it')
    needed = MIN_DRIVER_FOR_CUDA.get((torch.version.cuda or '').split('.')[0])
    if not torch.version.cuda:
        cause = f'torch {torch.__version__} is a CPU-only build. Install a torch wheel that matches the driver'
    elif driver and needed and _version_key(driver) >= _version_key(needed):
        cause = (f'torch {torch.__version__} is built for CUDA {torch.version.cuda}, which this driver runs, so '
                 'the GPUs are not reachable from this process (device files, container GPU runtime, '
                 'CUDA_VISIBLE_DEVICES naming GPUs that do not exist). Check what nvidia-smi and '
                 "python -c 'import torch; torch.cuda.init()' report")
    else:
        cause = (f'torch {torch.__version__} is built for CUDA {torch.version.cuda}'
                 + (f', which needs driver {needed} or newer' if needed else '')
                 + '. Install a torch wheel that matches the driver, or update the driver')
    raise RuntimeError(
        f'GPUs are visible ({"; ".join(signs)}, {driver_text}) but torch cannot use CUDA: {cause} (README, '
        '"Install into an existing environment"). Stopped instead of running on the CPU; to run on the CPU '
        "deliberately, set CUDA_VISIBLE_DEVICES=''.")


def _version_key(version: str) -> tuple:
    return tuple(int(part) for part in re.findall(r'\d+', version))


def train(cfg: Config, resume: bool = False, amp: bool = False) -> Runner:
    """Build the Runner from ``cfg`` and train.

    Args:
        cfg: the run's config (from ``load_config``).
        resume: continue from the work dir's latest checkpoint.
        amp: train with mixed precision (``enable_amp``).

    Returns:
        The Runner, after training.

    Raises:
        RuntimeError: GPUs are visible but torch cannot use CUDA (``check_gpus_usable``).
        FileNotFoundError: a pretrained file the model config names is missing (``check_pretrained_files``).
        DatasetError: the data folders the config points at have problems (``check_config_datasets``).
        ValueError: ``amp`` with an optimizer wrapper it cannot replace, or training crops that differ from the
            data preprocessor's size.
        ResumeRefusedError: ``resume`` with a checkpoint that does not fit the run the config describes.
        UnsafeCheckpointError: the checkpoint to resume or load holds Python objects a weights-only load refuses.
    """
    check_gpus_usable()
    if amp:
        enable_amp(cfg)
    cfg.resume = resume
    launch_on_cpu_processes(cfg)
    check_pretrained_files(cfg.model)
    check_config_datasets(cfg)
    runner = QuietConsoleRunner.from_cfg(cfg)
    runner.train()
    _end_distributed_run(cfg)
    return runner


def test(cfg: Config, checkpoint: str, show_dir: Optional[str] = None, out: Optional[str] = None,
         tta: bool = False, show: bool = False, wait_time: float = 2.0) -> dict:
    """Evaluate ``checkpoint`` with the config's evaluator (mIoU); optionally write prediction overlays.

    Args:
        cfg: the run's config (from ``load_config``).
        checkpoint: the ``.pth`` file to evaluate.
        show_dir: folder for the prediction overlays.
        out: folder for the raw predictions (the evaluator's ``output_dir``).
        tta: evaluate with the config's test-time augmentation (``tta_model``, ``tta_pipeline``).
        show: show each overlay in a window.
        wait_time: seconds each shown overlay stays up.

    Returns:
        The evaluator's metrics (e.g. ``mIoU``).

    Raises:
        FileNotFoundError: ``checkpoint`` does not exist.
        ValueError: ``tta`` with a config that lacks ``tta_model`` or ``tta_pipeline``.
        RuntimeError: GPUs are visible but torch cannot use CUDA (``check_gpus_usable``).
        DatasetError: the test data folders have problems (``check_config_datasets``).
        UnsafeCheckpointError: ``checkpoint`` holds Python objects that a weights-only load refuses.
    """
    if not osp.isfile(checkpoint):
        raise FileNotFoundError(f'checkpoint {checkpoint!r} does not exist; pass a .pth written by training '
                                '(e.g. work_dirs/<config>/iter_160000.pth)')
    check_gpus_usable()
    launch_on_cpu_processes(cfg)
    cfg.load_from = checkpoint
    if show or show_dir:
        hook = cfg.default_hooks.visualization
        hook.draw = True
        hook.interval = 1
        if show:
            hook.show, hook.wait_time = True, wait_time
        if show_dir:
            cfg.visualizer.save_dir = show_dir
            # visualizers are process-wide singletons by name: a new name makes a second test() in the same
            # process write to its own show_dir
            cfg.visualizer.name = f'visualizer:{osp.abspath(show_dir)}'
    if tta:
        missing = [key for key in ('tta_pipeline', 'tta_model') if cfg.get(key) is None]
        if missing:
            raise ValueError(f'--tta needs {" and ".join(missing)} in the config: add tta_model = '
                             "dict(type='SegTTAModel') and a tta_pipeline (LoadImageFromFile, then TestTimeAug over "
                             'Resize scale factors and flips, LoadAnnotations, PackSegInputs), as '
                             'configs/custom/snella_vit-b_my-dataset.py does; or test without --tta')
        cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
        cfg.tta_model.module = cfg.model
        cfg.model = cfg.tta_model
    if out:
        cfg.test_evaluator['output_dir'] = out
        cfg.test_evaluator['keep_results'] = True
    check_config_datasets(cfg, TEST_LOADERS)
    runner = QuietConsoleRunner.from_cfg(cfg)
    metrics = runner.test()
    _end_distributed_run(cfg)
    return metrics
