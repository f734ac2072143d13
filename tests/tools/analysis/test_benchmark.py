"""The benchmark runs every method in its own process and reports consistent sizes (no timing assertions)."""
import json
from pathlib import Path

import pytest
import torch

from benchmark import (METHODS, _config, alternating_order, available_methods, baseline_config_path, build_parser,
                       format_table, main, resolve_methods)

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


def test_all_methods_are_the_shipped_baselines_and_a_method_without_a_config_is_skipped():
    vit_b, sam_b = str(CONFIGS / 'snella_vit-b_ade20k.py'), str(CONFIGS / 'snella_sam-b_ade20k.py')
    shipped = {path.name.split('_', 1)[0] for path in (CONFIGS / 'baselines').glob('*_vit-b_ade20k.py')}
    methods, skipped = resolve_methods(vit_b, ['all'])
    assert methods[:len(METHODS)] == list(METHODS) and set(methods) == shipped | set(METHODS) and not skipped
    assert {'bitfit', 'ln-tune', 'partial', 'adapter', 'adaptformer', 'ssf', 'vpt-deep', 'mona', 'peft-lora', 'dora',
            'adalora', 'loha', 'lokr'} <= set(methods)
    methods, skipped = resolve_methods(sam_b, ['lora', 'all', 'lora'])  # VPT-deep refuses SAM's windowed blocks
    assert methods == [m for m in available_methods(sam_b) if m != 'vpt-deep']
    assert skipped == {'vpt-deep': f'no vpt-deep baseline for {sam_b}: expected '
                       f'{CONFIGS / "baselines" / "vpt-deep_sam-b_ade20k.py"}'}
    assert resolve_methods(vit_b, ['snella', 'lora', 'snella']) == (['snella', 'lora'], {})
    with pytest.raises(ValueError, match='unknown methods'):
        resolve_methods(vit_b, ['lroa'])


def _tiny_layout_with_zoo_baselines(ade_root, folder, methods):
    """``tiny_config_with_baselines`` plus the shipped ViT-B baselines of ``methods`` rebased on the tiny config."""
    config = tiny_config_with_baselines(ade_root, folder)
    for method in methods:
        shipped = (CONFIGS / 'baselines' / f'{method}_vit-b_ade20k.py').read_text()
        text = shipped.replace("'../snella_vit-b_ade20k.py'", "'../snella_tiny.py'").replace(
            "'../_base_/", f"'{CONFIGS}/_base_/")
        (folder / 'baselines' / f'{method}_tiny.py').write_text(text)
    return config


def test_methods_all_gives_every_method_its_trainable_count_and_estimate_in_one_run(ade_root, tmp_path):
    config = _tiny_layout_with_zoo_baselines(ade_root, tmp_path, ['bitfit', 'peft-lora'])
    out = tmp_path / 'all.json'
    main(['--config', config, '--methods', 'all', '--estimate-memory', '--crop', '64', '--batch', '2', '--rank', '4',
          '--device', 'cpu', '--out', str(out)])
    result = json.loads(out.read_text())
    rows = {r['method']: r for r in result['training']}
    assert list(rows) == [*METHODS, 'bitfit', 'peft-lora'] and result['settings']['methods'] == list(rows)
    params = {m: r['trainable_params'] for m, r in rows.items()}
    assert params['frozen'] < params['bitfit'] < params['lora'] < params['full']
    # peft's LoRA at --rank 4 on the fused qkv (32 -> 96), proj, fc1 (32 -> 128) and fc2 of the 4 blocks, with the
    # same heads as the project's LoRA, which adapts q, k and v apart
    heads = params['frozen']
    assert params['peft-lora'] - heads == 4 * 4 * ((32 + 96) + (32 + 32) + (32 + 128) + (128 + 32))
    assert params['lora'] - heads == 4 * 4 * (3 * (32 + 32) + (32 + 32) + (32 + 128) + (128 + 32))
    assert all(r['peak_memory_mb'] > 0 and 'memory_vs_lora' in r and 'memory_vs_full' in r for r in rows.values())
    assert rows['lora']['memory_vs_lora'] == rows['full']['memory_vs_full'] == 1.0
    table = format_table(result)
    assert '| bitfit |' in table and '| peft-lora |' in table


def test_a_library_method_trains_through_the_benchmarks_measured_path(ade_root, tmp_path):
    """CPU step time and peak memory of a PEFTBackbone method, as ``--methods all`` measures each in its process."""
    import benchmark
    config = _tiny_layout_with_zoo_baselines(ade_root, tmp_path, ['peft-lora'])
    args = build_parser().parse_args(['--config', config, '--crop', '32', '--batch', '1', '--iters', '1',
                                      '--warmup', '0', '--rank', '4', '--device', 'cpu'])
    row = benchmark.measure_training(args, 'peft-lora')
    assert row['step_seconds'] > 0 and row['peak_memory_mb'] > 0 and row['optimizer_state_mb'] > 0
    assert row['trainable_params'] == benchmark.estimate_memory(args, 'peft-lora')['trainable_params']


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


def test_skip_memory_times_each_method_without_its_separate_memory_run(monkeypatch):
    import benchmark
    jobs = []

    def fake_process(args, job, extra_flags=(), env=None):
        jobs.append('memory' if extra_flags else 'time')
        return {'method': job, 'step_seconds': 2.0 if job == 'snella' else 1.0, 'importance_fraction': None,
                'peak_memory_mb': 10.0, 'trainable_params': 1, 'optimizer_state_mb': 1.0, 'peak_over_build_mb': 1.0,
                'page_faults_per_step': 7}
    monkeypatch.setattr(benchmark, '_in_fresh_process', fake_process)
    args = build_parser().parse_args(['--methods', 'lora', 'snella', '--device', 'cpu', '--skip-inference',
                                      '--skip-memory'])
    result = benchmark.run_benchmark(args)
    assert jobs == ['time', 'time']
    snella = {r['method']: r for r in result['training']}['snella']
    assert snella['peak_memory_mb'] is None and 'memory_vs_lora' not in snella and snella['time_vs_lora'] == 2.0
    assert '| snella | 0.00M | 1.0 | - | - | - | - | 2.00 | 2.00 |' in format_table(result)


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
    assert list(rows) == ['snella', 'lora', 'frozen', 'snella-fused'] and rows['lora']['vs_lora'] == 1.0
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
