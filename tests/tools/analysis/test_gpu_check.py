"""The GPU check's verdicts, fed made-up results: a missed target or a resume that lost state is never a pass."""
import copy

import pytest
import torch

import gpu_check


def _checkpoint(**changes) -> dict:
    checkpoint = {
        'meta': {'time': 'now'},
        'state_dict': {'weight': torch.ones(3, 3), 'mask': torch.tensor([True, False])},
        'rng_state': {'world_size': 1, 'ranks': [{'torch': torch.arange(16, dtype=torch.uint8), 'python': {
            'internal': torch.arange(4), 'gauss_next': None}}]},
        'snella_allocator': {'reallocations': 3, 'importance_updates': 12, 'budget': 1000},
    }
    for change in changes.values():
        change(checkpoint)
    return checkpoint


def _compare(tmp_path, expected: dict, actual: dict) -> dict:
    torch.save(expected, tmp_path / 'expected.pth')
    torch.save(actual, tmp_path / 'actual.pth')
    return gpu_check.compare_checkpoints(str(tmp_path / 'expected.pth'), str(tmp_path / 'actual.pth'))


def _noisy_weight(checkpoint, by=1e-6):
    checkpoint['state_dict']['weight'] = checkpoint['state_dict']['weight'] + by


def _flip_rng_byte(checkpoint):
    checkpoint['rng_state']['ranks'][0]['torch'][5] += 1


def _count_one_more_reallocation(checkpoint):
    checkpoint['snella_allocator']['reallocations'] += 1


@pytest.fixture
def repeat(tmp_path):
    """Two uninterrupted runs of a nondeterministic device: the weight differs by 1e-6."""
    return _compare(tmp_path, _checkpoint(), _checkpoint(noise=_noisy_weight))


def test_a_resume_differing_in_one_rng_byte_and_one_allocator_counter_fails(tmp_path, repeat):
    resume = _compare(tmp_path, _checkpoint(), _checkpoint(noise=_noisy_weight, rng=_flip_rng_byte,
                                                            counter=_count_one_more_reallocation))
    assert resume['exact_differing'] == ['rng_state.ranks[0].torch', 'snella_allocator.reallocations']
    assert not gpu_check.resumed_faithfully(resume, repeat)


@pytest.mark.parametrize('lost', [_flip_rng_byte, _count_one_more_reallocation])
def test_one_lost_integer_alone_fails_a_resume_within_float_noise(tmp_path, repeat, lost):
    resume = _compare(tmp_path, _checkpoint(), _checkpoint(noise=_noisy_weight, lost=lost))
    assert not gpu_check.resumed_faithfully(resume, repeat)


def test_float_tensors_are_judged_against_their_own_difference_between_two_runs(tmp_path, repeat):
    within = _compare(tmp_path, _checkpoint(), _checkpoint(noise=lambda c: _noisy_weight(c, 5e-6)))
    assert gpu_check.resumed_faithfully(within, repeat)
    beyond = _compare(tmp_path, _checkpoint(), _checkpoint(noise=lambda c: _noisy_weight(c, 1e-3)))
    assert not gpu_check.resumed_faithfully(beyond, repeat)
    assert not gpu_check.resumed_faithfully(within, None)  # no repeat: only identical passes


def test_times_and_paths_of_a_checkpoint_are_not_compared(tmp_path):
    other = _checkpoint()
    other['meta']['time'] = 'later'
    assert _compare(tmp_path, _checkpoint(), other)['identical']


def _run(method, precision, seconds, memory, launches, estimate=None):
    return {'method': method, 'precision': precision, 'step_seconds': seconds, 'peak_memory_mb': memory,
            'launches_per_step': launches, 'measured_over_estimated': estimate or 1.1}


def test_each_target_has_its_figure_and_bound_and_one_miss_fails_the_part():
    runs = [_run('full', 'bf16', 1.0, 1000, 100), _run('lora', 'bf16', 0.9, 800, 200),
            _run('snella', 'bf16', 1.0, 650, 300, estimate=1.6)]
    readings = gpu_check.read_targets(runs, 'cuda')
    targets = {t['name']: t for t in readings['targets']}
    assert targets['snella_bf16_time_vs_full'] == {'name': 'snella_bf16_time_vs_full', 'figure': 1.0, 'bound': 1.05,
                                                   'met': True}
    assert targets['snella_bf16_memory_vs_full']['figure'] == pytest.approx(0.65)
    launches = targets['snella_bf16_launches_vs_lora']
    assert (launches['figure'], launches['bound'], launches['met']) == (1.5, 1.3, False)
    assert not targets['snella_bf16_measured_over_estimated']['met']
    assert len(targets) == len(gpu_check.TARGETS) + 3 and readings['met'] is False


def _workers_returning(monkeypatch, lora_seconds: float) -> None:
    """Replace the training part's workers with made-up bf16 and fp32 runs of full, LoRA and SNELLA."""
    runs = [_run('full', 'bf16', 1.0, 1000, 100), _run('lora', 'bf16', lora_seconds, 800, 100),
            _run('snella', 'bf16', 1.0, 650, 100)]
    monkeypatch.setattr(gpu_check, '_run_workers', lambda part, group, *_: [
        copy.deepcopy(r) for r in runs + [dict(r, precision='fp32') for r in runs]
        if (r['method'], r['precision']) in group])


def test_a_training_part_that_ran_but_missed_a_target_is_not_passed(monkeypatch):
    _workers_returning(monkeypatch, lora_seconds=0.5)
    result = gpu_check.check_training('cuda', tiny=False, budget=60, part='sam')
    assert result['ran'] and result['met'] is False and not result['passed']
    assert [r['precision'] for r in result['runs']][:2] == ['bf16', 'bf16']  # bf16 first: the targets' runs


def test_a_target_whose_runs_failed_is_missed():
    runs = [_run('lora', 'bf16', 1.0, 800, 100), {'method': 'snella', 'precision': 'bf16', 'error': 'out of memory'}]
    targets = gpu_check.read_targets(runs, 'cuda')['targets']
    names = {name for name, *_ in gpu_check.TARGETS}
    assert [t['met'] for t in targets if t['name'] in names] == [False] * len(gpu_check.TARGETS)


@pytest.mark.parametrize('snella_us, met', [(150.0, True), (300.0, False)])
def test_the_host_time_per_update_is_held_to_twice_loras(snella_us, met):
    runs = [_run('lora', 'bf16', 1.0, 800, 100), _run('snella', 'bf16', 1.0, 650, 100)]
    runs[0]['update_host_microseconds'], runs[1]['update_host_microseconds'] = 100.0, snella_us
    targets = {t['name']: t for t in gpu_check.read_targets(runs, 'cuda')['targets']}
    host = targets['snella_update_host_time_vs_lora']
    assert (host['figure'], host['bound'], host['met']) == (snella_us / 100, 2.0, met)


def test_the_host_time_per_update_is_measured_after_the_training_parts_bf16_runs_on_a_gpu(monkeypatch):
    """At the run's rank (the kernels it compiled), for SNELLA on either path and LoRA only."""
    import argparse

    import benchmark
    calls = []
    monkeypatch.setattr(benchmark, 'measure_update_host_time', lambda method, device, rank: calls.append(
        (method, device, rank)) or {'microseconds_per_update': 42.0})
    args = argparse.Namespace(device='cuda', rank=32)
    for method in ('snella', gpu_check.EAGER, 'lora'):
        assert gpu_check._update_host_time('training', method, 'bf16', args) == {'update_host_microseconds': 42.0}
    assert calls == [('snella', 'cuda', 32), ('snella', 'cuda', 32), ('lora', 'cuda', 32)]
    for part, method, precision, device in (('training', 'full', 'bf16', 'cuda'),
                                            ('training', 'snella', 'fp32', 'cuda'), ('sam', 'snella', 'bf16', 'cuda'),
                                            ('training', 'snella', 'bf16', 'cpu')):
        assert gpu_check._update_host_time(part, method, precision, argparse.Namespace(device=device, rank=8)) == {}
    assert len(calls) == 3


def test_targets_are_not_read_on_a_cpu():
    readings = gpu_check.read_targets([_run('lora', 'bf16', 1.0, 10, 10), _run('snella', 'bf16', 9.0, 10, 90)], 'cpu')
    assert readings['targets'] == [] and readings['met'] is None


@pytest.fixture
def fused_choices(monkeypatch):
    """Each ``use_fused(enabled)`` that the GPU check enters, in order (the switch itself then does nothing)."""
    import contextlib

    from snella_seg.snella import fused_kernels
    chosen = []

    @contextlib.contextmanager
    def recording(enabled):
        chosen.append(enabled)
        yield

    monkeypatch.setattr(fused_kernels, 'use_fused', recording)
    return chosen


def test_the_fused_path_is_compared_with_eager_where_it_exists(monkeypatch, fused_choices):
    import sys

    import snella_seg.snella
    chosen = fused_choices
    parity = gpu_check._fused_path_parity('cpu', tiny=True)
    assert parity['ran'] and len(parity['cases']) == len(gpu_check.TINY_SELECTION_SHAPES)
    # ΔW alone, then a layer's step, each eager then fused
    assert chosen == [False, True, False, True] * len(gpu_check.TINY_SELECTION_SHAPES)
    # on the CPU without Triton's interpreter both sides are eager's
    assert parity['fused_path'].startswith('unavailable') and parity['agrees']
    assert all(case['max_abs_diff'] == 0 and case['kept_set_differences'] == 0 for case in parity['cases'])
    assert [case['split'] for case in parity['cases']] == [3, 1, 3]
    assert all(set(case['largest_relative_difference']) >= {'output', 'input grad', 'deltas.0.in_factors'}
               for case in parity['cases'])
    monkeypatch.setitem(sys.modules, 'snella_seg.snella.fused_kernels', None)  # a checkout without the fused path
    monkeypatch.delattr(snella_seg.snella, 'fused_kernels')
    assert 'no fused SNELLA path' in gpu_check._fused_path_parity('cpu', tiny=True)['note']


def test_in_the_interpreter_the_parity_compares_the_fused_kernels_with_eager():
    """A CPU rehearsal with TRITON_INTERPRET=1 runs the fused kernels (small shapes here: the interpreter is slow)."""
    import json
    import os
    import subprocess
    import sys
    code = ('import json, gpu_check; gpu_check.TINY_SELECTION_SHAPES = ((12, 12), (12, 40)); '
            'print(json.dumps(gpu_check._fused_path_parity("cpu", tiny=True)))')
    done = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=600,
                          env={**os.environ, 'TRITON_INTERPRET': '1',
                               'PYTHONPATH': os.pathsep.join(filter(None, [os.path.dirname(gpu_check.__file__),
                                                                           os.environ.get('PYTHONPATH')]))})
    assert done.returncode == 0, done.stderr[-3000:]
    parity = json.loads(done.stdout.strip().splitlines()[-1])
    if parity['fused_path'].startswith('unavailable'):
        pytest.skip('triton does not import here')
    assert parity['fused_path'] == 'triton interpreter' and parity['agrees'], parity['disagreements']
    # two different paths: rounding differs somewhere
    assert any(value > 0 for case in parity['cases'] for value in case['largest_relative_difference'].values())


def test_parity_beyond_its_bounds_names_the_disagreement():
    case = {'shape': [8, 8], 'kept_by_both_relative_difference': 1e-6, 'kept_set_differences': 1, 'entries': 64,
            'largest_relative_difference': {'output': 1e-6, 'deltas.0.alpha': 0.02}}
    verdict = gpu_check._parity_verdict([case])
    assert not verdict['agrees']
    assert verdict['disagreements'] == ['8x8: 1 entries kept by one path only',
                                        '8x8: deltas.0.alpha differs by 2.00e-02']
    case.update(kept_set_differences=0, largest_relative_difference={'output': float('nan')})
    assert gpu_check._parity_verdict([case])['disagreements'] == ['8x8: output differs by nan']


def test_a_training_part_whose_fused_path_disagrees_with_eager_is_not_passed(monkeypatch):
    _workers_returning(monkeypatch, lora_seconds=1.0)
    monkeypatch.setattr(gpu_check, '_fused_path_parity', lambda device, tiny: {
        'ran': True, 'agrees': False, 'disagreements': ['1024x1024: output differs by 1.00e-02']})
    result = gpu_check.check_training('cpu', tiny=True, budget=60, part='training')
    assert result['ran'] and result['met'] is None and not result['passed']


def test_a_parity_that_raises_fails_the_part_and_keeps_the_runs(monkeypatch):
    """As Triton 3.6's interpreter raised with NumPy 2.5: the timed runs must not be lost with it."""
    _workers_returning(monkeypatch, lora_seconds=1.0)

    def raising(device, tiny):
        raise RuntimeError('interpreter error')
    monkeypatch.setattr(gpu_check, '_fused_path_parity', raising)
    result = gpu_check.check_training('cpu', tiny=True, budget=60, part='training')
    assert len(result['runs']) == 6 and result['ran'] and not result['passed']
    assert result['fused_vs_eager']['error'] == 'RuntimeError: interpreter error'


def test_on_a_gpu_the_eager_path_is_timed_in_bf16_after_the_targets_runs(monkeypatch):
    runs = [_run('full', 'bf16', 1.0, 1000, 100), _run('lora', 'bf16', 0.9, 800, 200),
            _run('snella', 'bf16', 1.0, 650, 220), _run(gpu_check.EAGER, 'bf16', 2.5, 660, 900)]
    planned = []

    def workers(part, group, *_):
        planned.extend(group)
        return [copy.deepcopy(r) for r in runs + [dict(r, precision='fp32') for r in runs[:3]]
                if (r['method'], r['precision']) in group]

    monkeypatch.setattr(gpu_check, '_run_workers', workers)
    monkeypatch.setattr(gpu_check, '_fused_path_parity', lambda device, tiny: {'ran': True, 'cases': []})
    result = gpu_check.check_training('cuda', tiny=False, budget=60, part='training')
    assert planned == [('lora', 'bf16'), ('snella', 'bf16'), ('full', 'bf16'), (gpu_check.EAGER, 'bf16'),
                       ('lora', 'fp32'), ('snella', 'fp32'), ('full', 'fp32')]
    step = result['fused_vs_eager']['step']
    assert step['ran'] and (step['fused_step_seconds'], step['eager_step_seconds']) == (1.0, 2.5)
    assert step['eager_over_fused_step'] == 2.5 and step['eager_over_fused_launches'] == pytest.approx(900 / 220)
    # the targets read the fused run; eager's peak is held to the estimate like every run's
    names = [t['name'] for t in result['targets']]
    assert f'{gpu_check.EAGER}_bf16_measured_over_estimated' in names
    assert len(names) == len(gpu_check.TARGETS) + 7


def test_without_a_gpu_the_eager_path_is_not_timed_and_says_why():
    assert gpu_check._runs_in_order(('lora', 'snella'), tiny=True) == [[('lora', 'bf16'), ('snella', 'bf16')],
                                                                    [('lora', 'fp32'), ('snella', 'fp32')]]
    step = gpu_check.eager_against_fused([_run('snella', 'bf16', 1.0, 10, 10)])
    assert not step['ran'] and 'on a GPU' in step['note']


def test_the_eager_run_measures_snella_with_the_fused_path_switched_off(fused_choices):
    row = gpu_check.measure_one_run('training', gpu_check.EAGER, 'fp32', 'cpu', tiny=True)
    assert fused_choices == [False] and row['method'] == gpu_check.EAGER and row['step_seconds'] > 0
    assert row['trainable_params'] == gpu_check.measure_one_run('training', 'snella', 'fp32', 'cpu',
                                                                tiny=True)['trainable_params']
