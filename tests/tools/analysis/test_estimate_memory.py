"""The fake-tensor memory estimate: exact accounting on hand-computed cases, the same peak as the real
computation, and the estimates docs/memory.md states for the shipped configs."""
import copy
import json
import os.path as osp
import re

import pytest
import torch
from mmengine.config import Config

from benchmark import METHODS, main as benchmark_main
from estimate_memory import LiveTensorMemory, estimate_training_memory, main

from tests.helpers.configs import tiny_config, tiny_config_with_baselines
from tests.helpers.paths import REPO


def test_live_storages_are_counted_once_in_512_byte_blocks_until_freed():
    tracker = LiveTensorMemory()
    with tracker:
        a = torch.ones(1000)  # 4000 bytes -> 4096
        view = a.view(10, 100)  # shares a's storage
        b = a * 2  # 4096
        assert tracker.current == 8192
        del a
        assert tracker.current == 8192  # the view keeps the storage alive
        del view
        assert tracker.current == 4096
        c = torch.ones(1)  # 4 bytes -> one 512-byte block
        assert tracker.current == 4096 + 512
    assert tracker.peak == 8192
    del b, c
    assert tracker.current == 0


def test_a_storage_resized_in_place_counts_at_its_new_size_once_resynced():
    """The allocator releases its working buffer between steps by resizing the storage, which no operator sees."""
    tracker = LiveTensorMemory()
    with tracker:
        kept = torch.ones(1024)  # 4096 bytes
        buffer = torch.ones(2048)  # 8192
        view = buffer[:10]
    buffer.untyped_storage().resize_(0)
    assert tracker.current == 4096 + 8192  # not seen yet
    tracker.resync()
    assert tracker.current == 4096
    buffer.untyped_storage().resize_(4096 * 4)
    tracker.resync()
    assert tracker.current == tracker.peak == 4096 + 16384
    del buffer, view
    assert tracker.current == 4096
    del kept
    assert tracker.current == 0


def test_a_backward_pass_frees_what_it_saved():
    weight = torch.ones(256, 256, requires_grad=True)  # made before tracking: not counted
    tracker = LiveTensorMemory()
    with tracker:
        x = torch.ones(128, 256)  # 128 KiB
        hidden = (x @ weight).relu()  # two 128 KiB outputs: x @ W is not saved, relu's output is
        loss = hidden.sum()
        del hidden
        assert tracker.current == 2 * 2 ** 17 + 512  # x (saved for W's gradient), relu's output, the loss
        loss.backward()
        del loss
    assert weight.grad.shape == (256, 256)
    assert tracker.current == 2 ** 17 + 2 ** 18  # x and W's 256 KiB gradient remain; the graph is gone
    assert tracker.peak >= 2 ** 17 + 2 ** 17 + 2 ** 18  # W's gradient is made from x and relu's input gradient


def test_an_absorbed_activation_is_stored_once():
    """fc1 -> GELU -> fc2: GELU keeps its input and fc2 its output; absorbed into fc2, only the input is kept."""
    from tests.helpers.tiny_vit import MLP
    from snella_seg.snella import absorb_activation, inject_snella

    def saved_bytes(absorb: bool) -> int:
        torch.manual_seed(0)
        mlp = MLP(dim=64, hidden=256)
        inject_snella(mlp, [r'fc2'], rank=4)
        if absorb:
            absorb_activation(mlp.act, mlp.fc2)
        x = torch.randn(64, 64, requires_grad=True)
        tracker = LiveTensorMemory()
        with tracker:
            out = mlp(x)  # what is alive now is the output and what the graph saved
        assert out.shape == (64, 64)
        return tracker.current

    assert saved_bytes(False) - saved_bytes(True) == 64 * 256 * 4  # one 64 x 256 float32 hidden tensor


def test_fake_run_finds_the_peak_of_the_real_computation(ade_root, tmp_path):
    cfg = tiny_config(ade_root, str(tmp_path))
    fake = estimate_training_memory(cfg, batch=2, crop=64)
    real = estimate_training_memory(cfg, batch=2, crop=64, fake=False)
    assert fake == real
    assert fake['peak_mb'] > fake['weights_mb'] + fake['optimizer_state_mb']


def test_estimate_cli_writes_a_row_per_config(ade_root, tmp_path, capsys):
    config = tmp_path / 'tiny.py'
    tiny_config(ade_root, str(tmp_path / 'work')).dump(str(config))
    out = tmp_path / 'estimate.json'
    main([str(config), '--batch', '1', '--crop', '64', '96', '--out', str(out)])
    rows = json.loads(out.read_text())
    assert len(rows) == 1 and rows[0]['crop'] == [64, 96] and rows[0]['batch'] == 1
    assert f'| `{config}` | 1 | 64x96 | fp32 |' in capsys.readouterr().out


def test_amp_configs_are_estimated_in_16_bit_autocast(ade_root, tmp_path):
    """A CUDA AmpOptimWrapper (as ``tools/train.py --amp`` sets on a GPU) cannot be built without CUDA; the
    estimate follows it with CPU bf16 autocast, whose 16-bit activations take less memory than fp32."""
    cfg = tiny_config(ade_root, str(tmp_path))
    fp32 = estimate_training_memory(cfg, batch=2, crop=64)
    cuda_amp = copy.deepcopy(cfg)
    cuda_amp.optim_wrapper.update(type='AmpOptimWrapper', loss_scale='dynamic')
    amp = estimate_training_memory(cuda_amp, batch=2, crop=64)
    assert not fp32['amp'] and amp['amp']
    assert amp['peak_mb'] < fp32['peak_mb']
    assert estimate_training_memory(cfg, batch=2, crop=64, amp=True) == amp
    assert cuda_amp.optim_wrapper.type == 'AmpOptimWrapper' and cfg.optim_wrapper.type == 'OptimWrapper'


def test_the_guarded_amp_wrapper_of_amp_runs_is_estimated_as_amp(ade_root, tmp_path):
    """``--amp`` on a GPU builds GuardedAmpOptimWrapper, with options the CPU wrapper does not take."""
    cfg = tiny_config(ade_root, str(tmp_path))
    cfg.optim_wrapper.update(type='GuardedAmpOptimWrapper', dtype='float16', device_type='cuda',
                             max_consecutive_skips=5, min_loss_scale=1.0)
    assert estimate_training_memory(cfg, batch=2, crop=64)['amp']


def test_benchmark_estimates_every_method_without_training(ade_root, tmp_path):
    config = tiny_config_with_baselines(ade_root, tmp_path)
    out = tmp_path / 'bench.json'
    benchmark_main(['--config', config, '--crop', '64', '--batch', '2', '--rank', '4', '--estimate-memory',
                    '--out', str(out)])
    rows = {r['method']: r for r in json.loads(out.read_text())['training']}
    peak = {m: r['peak_memory_mb'] for m, r in rows.items()}
    assert set(peak) == set(METHODS)
    assert peak['frozen'] == min(peak.values())  # no gradient flows through the frozen backbone
    assert all(r['step_seconds'] is None for r in rows.values())
    assert rows['snella']['memory_vs_lora'] == pytest.approx(peak['snella'] / peak['lora'])


README_ROW = re.compile(r'^\| `(configs/[^`]+\.py)` \| (\d+) \| (\d+)x(\d+) \| ([\d.]+) GB \|')


def readme_memory_rows():
    with open(osp.join(REPO, 'docs', 'memory.md'), encoding='utf-8') as f:
        return {m.group(1): (int(m.group(2)), float(m.group(5))) for m in map(README_ROW.match, f) if m}


def test_readme_memory_table_covers_every_snella_config():
    import glob
    shipped = {osp.relpath(p, REPO) for p in glob.glob(osp.join(REPO, 'configs', 'snella_*.py'))}
    assert set(readme_memory_rows()) == shipped


@pytest.mark.parametrize('path', ['configs/snella_vit-b_ade20k.py', 'configs/snella_sam-b_kvasir-seg.py'])
def test_readme_states_the_estimate_of_a_config(path):
    """A ViT and a SAM row recomputed (seconds each): a change to either family's memory must update the table,
    which the tool regenerates whole."""
    batch, stated_gb = readme_memory_rows()[path]
    estimate = estimate_training_memory(Config.fromfile(osp.join(REPO, path)))
    assert estimate['batch'] == batch
    assert round(estimate['peak_mb'] / 1024, 1) == stated_gb


def test_large_selections_are_estimated_as_cuda_runs_them():
    """The CPU's sampled selection gathers a band whose size depends on the values, which fake tensors do not
    have; the estimate follows CUDA's topk selection instead."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from dispatch_counter import kernels_as_on_a_gpu
    from snella_seg.snella import SNELLALinear
    from snella_seg.snella.kernels import MIN_SAMPLED_SELECTION
    side = int(MIN_SAMPLED_SELECTION ** 0.5)
    layer = SNELLALinear(torch.nn.Linear(side, side), rank=4, kernel='snell', sparsity=0.5)
    with FakeTensorMode(allow_non_fake_inputs=True) as mode, kernels_as_on_a_gpu(), LiveTensorMemory():
        out = layer(mode.from_tensor(torch.randn(3, side)))
    assert out.shape == (3, side)
