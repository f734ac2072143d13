"""The benchmark runs every method in its own process and reports consistent sizes (no timing assertions)."""
import json

import pytest

from snella_seg.benchmark import METHODS, build_parser, format_table, main

from ..integration.conftest import tiny_config


def test_benchmark_reports_every_method_consistently(ade_root, tmp_path):
    config = tmp_path / 'config.py'
    tiny_config(ade_root, str(tmp_path / 'work')).dump(str(config))
    out = tmp_path / 'bench.json'
    main(['--config', str(config), '--crop', '64', '--batch', '2', '--iters', '1', '--warmup', '0', '--rank', '4',
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
