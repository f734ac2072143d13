"""The benchmark runs every method in its own process and reports consistent sizes (no timing assertions)."""
import json
from pathlib import Path

import pytest
import torch

from benchmark import METHODS, _config, alternating_order, baseline_config_path, build_parser, format_table, main

from tests.helpers.configs import tiny_config_with_baselines
from tests.helpers.paths import REPO

CONFIGS = Path(REPO) / 'configs'


def test_benchmark_reports_every_method_consistently(ade_root, tmp_path):
    config = tiny_config_with_baselines(ade_root, tmp_path)
    out = tmp_path / 'bench.json'
    main(['--config', config, '--crop', '64', '--batch', '2', '--iters', '1', '--warmup', '0', '--rank', '4',
          '--device', 'cpu', '--out', str(out)])
    result = json.loads(out.read_text())
    rows = {r['method']: r for r in result['training']}
    assert set(rows) == set(METHODS)
    assert all(r['peak_memory_mb'] > 0 and r['step_seconds'] > 0 for r in rows.values())
    params = {m: r['trainable_params'] for m, r in rows.items()}
    assert params['frozen'] < params['lora'] == params['snell'] < params['full']
    # SNELLA = LoRA's rank * (in + out) per update + alpha, gamma, beta for each of the 4 blocks' q, k, v, proj,
    # fc1 and fc2 updates
    assert params['snella'] == params['lora'] + 4 * 6 * 3
    state = {m: r['optimizer_state_mb'] for m, r in rows.items()}
    assert state['lora'] < state['masked'] and state['snella'] < state['full']
    assert rows['snella']['importance_fraction'] > 0
    # SNELLA and SNELL run at the target sparsity, so their steps include the selection of kept entries
    assert rows['snella']['update_sparsity'] == rows['snell']['update_sparsity'] == pytest.approx(0.7)
    assert rows['lora']['update_sparsity'] == 0.0 and rows['full']['update_sparsity'] is None
    assert rows['lora']['memory_vs_lora'] == 1.0
    assert result['inference']['max_abs_diff_merged_vs_unmerged'] < 1e-4
    assert '| snella |' in format_table(result)


def test_parser_defaults_to_the_vit_b_config_at_512():
    args = build_parser().parse_args([])
    assert args.config.endswith('snella_vit-b_ade20k.py') and args.crop == 512 and args.rank == 32


def test_each_baseline_is_the_shipped_configs_baselines_file():
    sam_l = str(CONFIGS / 'snella_sam-l_ade20k.py')
    assert baseline_config_path(sam_l, 'lora') == str(CONFIGS / 'baselines' / 'lora_sam-l_ade20k.py')
    assert baseline_config_path(sam_l, 'masked') == str(CONFIGS / 'baselines' / 'full_sam-l_ade20k.py')
    assert baseline_config_path(sam_l, 'snella') == sam_l


def test_a_config_without_baselines_names_the_missing_file():
    with pytest.raises(FileNotFoundError, match='baselines/lora_vit-b_pascal-context-59.py'):
        baseline_config_path(str(CONFIGS / 'snella_vit-b_pascal-context-59.py'), 'lora')


def test_methods_alternate_over_repeats_in_reversed_pairs():
    assert alternating_order(['lora', 'snella'], 3) == ['lora', 'snella', 'snella', 'lora', 'lora', 'snella']


def test_each_method_gets_the_median_step_time_of_its_fresh_processes(monkeypatch):
    import benchmark
    step_seconds = {'lora': iter([1.0, 5.0, 2.0]), 'snella': iter([3.0, 3.5, 9.0])}
    calls = []

    def fake_process(args, job, extra_flags=(), env=None):
        calls.append((job, bool(extra_flags)))
        return {'method': job, 'step_seconds': None if extra_flags else next(step_seconds[job]),
                'importance_fraction': None, 'peak_memory_mb': 10.0, 'peak_over_build_mb': 1.0,
                'page_faults_per_step': 7}
    monkeypatch.setattr(benchmark, '_in_fresh_process', fake_process)
    args = build_parser().parse_args(['--methods', 'lora', 'snella', '--repeats', '3', '--device', 'cpu',
                                      '--skip-inference'])
    rows = {r['method']: r for r in benchmark.run_benchmark(args)['training']}
    assert [job for job, memory in calls if not memory] == alternating_order(['lora', 'snella'], 3)
    assert rows['lora']['step_seconds'] == 2.0 and rows['snella']['step_seconds'] == 3.5
    assert rows['snella']['step_seconds_runs'] == [3.0, 3.5, 9.0]
    assert rows['snella']['time_vs_lora'] == 1.75


@pytest.mark.parametrize('keep', [False, True])
def test_keep_freed_memory_changes_the_allocator_of_the_timed_runs_only(monkeypatch, keep):
    import benchmark
    envs = []

    def fake_process(args, job, extra_flags=(), env=None):
        envs.append(('memory' if extra_flags else 'time', env))
        return {'method': job, 'step_seconds': 1.0, 'importance_fraction': None, 'peak_memory_mb': 10.0,
                'trainable_params': 1, 'optimizer_state_mb': 1.0,
                'peak_over_build_mb': 1.0, 'page_faults_per_step': 7}
    monkeypatch.setattr(benchmark, '_in_fresh_process', fake_process)
    args = build_parser().parse_args(['--methods', 'lora', 'snella', '--device', 'cpu', '--skip-inference']
                                     + ['--keep-freed-memory'] * keep)
    result = benchmark.run_benchmark(args)
    timed = benchmark.KEEP_FREED_MEMORY_ENV if keep else None
    assert envs == [('time', timed)] * 2 + [('memory', benchmark.TRUE_RSS_ENV)] * 2
    assert result['settings']['keep_freed_memory'] is keep
    assert '| 7 |' in format_table(result)


def test_page_faults_per_step_are_the_median_over_the_measured_steps(ade_root, tmp_path, monkeypatch):
    import benchmark
    counter = iter([0, 900, 900, 930, 930, 940, 940, 1000])  # before/after of warm-up 900, then 30, 10, 60
    monkeypatch.setattr(benchmark, '_minor_page_faults', lambda: next(counter))
    config = tiny_config_with_baselines(ade_root, tmp_path)
    args = build_parser().parse_args(['--config', config, '--crop', '32', '--batch', '1', '--iters', '3',
                                      '--warmup', '1', '--rank', '4', '--device', 'cpu'])
    assert benchmark.measure_training(args, 'lora')['page_faults_per_step'] == 30


@pytest.mark.parametrize('device,wrapper', [('cuda', 'GuardedAmpOptimWrapper'), ('cpu', 'CPUAmpOptimWrapper')])
def test_amp_benchmarks_train_with_the_wrapper_that_amp_builds_on_that_device(device, wrapper):
    """On a GPU mmengine's AmpOptimWrapper would run a loss scaler under bf16 too, which --amp runs no longer."""
    args = build_parser().parse_args(['--device', device, '--amp', 'bfloat16', '--crop', '64'])
    cfg = _config(args, 'snella')
    assert cfg.optim_wrapper.type == wrapper and cfg.optim_wrapper.dtype == 'bfloat16'


def test_update_host_time_mode_reports_each_method_against_lora_as_json(monkeypatch, tmp_path):
    """The mode's table and JSON, its fresh processes run here in-process at two layers and two steps."""
    import benchmark

    def in_this_process(args, job, *_):
        assert args.host_steps == 2
        return benchmark.measure_update_host_time(job.partition(':')[2], layers=2, steps=2, warmup=1)
    monkeypatch.setattr(benchmark, '_in_fresh_process', in_this_process)
    out = tmp_path / 'host.json'
    main(['--update-host-time', '--host-steps', '2', '--device', 'cpu', '--out', str(out)])
    result = json.loads(out.read_text())
    rows = {r['method']: r for r in result['update_host_time']}
    assert list(rows) == ['snella', 'lora', 'frozen'] and rows['lora']['vs_lora'] == 1.0
    assert all(r['microseconds_per_update'] > 0 for r in rows.values())
    assert result['settings']['layers'] == 12 and result['settings']['threads'] == 1
    assert '| snella |' in benchmark.format_update_host_table(result)


def test_update_host_time_runs_snellas_selection_on_the_gpu_path():
    """SNELLA's tiny updates select their kept entries (sparsity above 0) without a host read, as on a GPU."""
    from dispatch_counter import DispatchCounter

    import benchmark
    model = benchmark._stacked_linears('snella', dict(benchmark.UPDATE_HOST_SETTING, layers=2), sparsity=0.7)
    assert all(m.sparsity_value == pytest.approx(0.7) for m in model.modules() if hasattr(m, 'sparsity_value'))
    x = torch.randn(4, 16, requires_grad=True)
    with benchmark.kernels_as_on_a_gpu(), DispatchCounter() as counter:
        model(x).sum().backward()
    assert counter.host_syncs == 0 and counter.counts['aten::topk'] > 0
