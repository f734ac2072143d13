"""runner.py's choices before a Runner is built: what ``--amp`` selects, and refusing to train on the CPU when the
machine shows GPUs that torch cannot use (both mocked: this machine has no GPU)."""
import shutil
import subprocess

import pytest
import torch
from mmengine.config import Config

from snella_seg.apis import runner
from snella_seg.apis.runner import check_gpus_usable, enable_amp


def amp_config(**wrapper) -> Config:
    return Config(dict(optim_wrapper=dict(type='OptimWrapper', optimizer=dict(type='AdamW', lr=1e-4), **wrapper)))


def test_amp_on_cuda_builds_the_guarded_wrapper_with_dynamic_loss_scaling(monkeypatch):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    cfg = amp_config()
    enable_amp(cfg)
    assert (cfg.optim_wrapper.type, cfg.optim_wrapper.loss_scale) == ('GuardedAmpOptimWrapper', 'dynamic')


def test_amp_on_cuda_leaves_the_dtype_choice_to_the_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    cfg = amp_config()
    enable_amp(cfg)
    assert cfg.optim_wrapper.get('dtype') is None


def test_amp_without_cuda_is_bf16_autocast_on_the_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    cfg = amp_config()
    enable_amp(cfg)
    assert cfg.optim_wrapper.type == 'CPUAmpOptimWrapper'


@pytest.fixture
def machine(monkeypatch, tmp_path):
    """A machine with no NVIDIA signs and no CUDA; tests add what they need."""
    monkeypatch.delenv('CUDA_VISIBLE_DEVICES', raising=False)
    monkeypatch.setattr(shutil, 'which', lambda name: None)
    monkeypatch.setattr(runner, 'NVIDIA_PROC_DIR', str(tmp_path / 'no-nvidia-driver'))
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    monkeypatch.setattr(torch.version, 'cuda', '13.0')
    return monkeypatch


def with_nvidia_smi(monkeypatch, driver: str) -> None:
    monkeypatch.setattr(shutil, 'which', lambda name: '/usr/bin/nvidia-smi' if name == 'nvidia-smi' else None)
    monkeypatch.setattr(subprocess, 'run', lambda *args, **kwargs: subprocess.CompletedProcess(args, 0, driver + '\n'))


def test_a_machine_without_gpus_trains_on_the_cpu(machine):
    check_gpus_usable()


def test_visible_gpus_with_an_old_driver_stop_the_run_naming_driver_wheel_and_fix(machine):
    machine.setenv('CUDA_VISIBLE_DEVICES', '0,1')
    with_nvidia_smi(machine, '535.104.05')
    with pytest.raises(RuntimeError) as err:
        check_gpus_usable()
    message = str(err.value)
    for part in ("CUDA_VISIBLE_DEVICES='0,1'", 'NVIDIA driver 535.104.05', 'built for CUDA 13.0',
                 'needs driver 580.65.06 or newer', 'Install a torch wheel that matches the driver',
                 "set CUDA_VISIBLE_DEVICES=''"):
        assert part in message


def test_a_new_enough_driver_points_at_unreachable_gpus_instead_of_the_wheel(machine):
    with_nvidia_smi(machine, '580.95.05')
    with pytest.raises(RuntimeError, match='which this driver runs, so the GPUs are not reachable'):
        check_gpus_usable()


def test_nvidia_smi_alone_shows_the_gpus(machine):
    with_nvidia_smi(machine, '535.104.05')
    with pytest.raises(RuntimeError, match='nvidia-smi is on PATH'):
        check_gpus_usable()


def test_the_driver_version_is_read_from_proc_without_nvidia_smi(machine, tmp_path):
    proc = tmp_path / 'nvidia'
    proc.mkdir()
    (proc / 'version').write_text('NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  570.86.15  Release Build '
                                  '(dvs-builder@U16-I3-B03-4-3)  Thu Jan 23 00:00:00 UTC 2025\n')
    machine.setattr(runner, 'NVIDIA_PROC_DIR', str(proc))
    with pytest.raises(RuntimeError, match=r'nvidia exists, NVIDIA driver 570\.86\.15\)'):
        check_gpus_usable()


def test_a_cpu_only_wheel_is_named(machine):
    machine.setenv('CUDA_VISIBLE_DEVICES', '0')
    machine.setattr(torch.version, 'cuda', None)
    with pytest.raises(RuntimeError, match='is a CPU-only build'):
        check_gpus_usable()


@pytest.mark.parametrize('hidden', ['', '-1'])
def test_gpus_hidden_by_cuda_visible_devices_train_on_the_cpu_deliberately(machine, hidden):
    machine.setenv('CUDA_VISIBLE_DEVICES', hidden)
    with_nvidia_smi(machine, '535.104.05')
    check_gpus_usable()


def test_visible_gpus_with_usable_cuda_pass(machine):
    machine.setenv('CUDA_VISIBLE_DEVICES', '0')
    machine.setattr(torch.cuda, 'is_available', lambda: True)
    check_gpus_usable()


def test_train_stops_before_building_a_runner(machine):
    machine.setenv('CUDA_VISIBLE_DEVICES', '0')
    machine.setattr(runner.QuietConsoleRunner, 'from_cfg', pytest.fail)
    with pytest.raises(RuntimeError, match='Stopped instead of running on the CPU'):
        runner.train(amp_config())
