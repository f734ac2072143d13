"""compare_runs reads finished work_dirs into one table, plot and JSON, and lists the others with their reasons."""
import json
import os
import os.path as osp
import subprocess
import sys

from compare_runs import built_counts, main, method_name

from tests.helpers.paths import REPO
from tests.helpers.tools import run_tool

DEMO_SCRIPT = osp.join(REPO, 'tools', 'run_comparison_demo.sh')


def fake_run(root, name, backbone, miou, counts=None, memory=True):
    """A work_dir as tools/train.py leaves it: the dumped config, a timestamped log and scalars.json."""
    work_dir = root / name
    (work_dir / '20260101_000000' / 'vis_data').mkdir(parents=True)
    (work_dir / 'method_config.py').write_text(f'model = dict(backbone={backbone!r})\n')
    lines = [dict(lr=0.001, loss=1.0, time=0.5, iter=10, **(dict(memory=900) if memory else {})),
             dict(lr=0.001, loss=0.8, time=0.3, iter=20, **(dict(memory=1200) if memory else {})),
             dict(aAcc=70.0, mIoU=miou, mAcc=miou + 5, step=20)]
    (work_dir / '20260101_000000' / 'vis_data' / 'scalars.json').write_text(
        '\n'.join(json.dumps(line) for line in lines) + '\n')
    if counts:
        (work_dir / '20260101_000000' / '20260101_000000.log').write_text(
            f'2026/01/01 00:00:00 - mmengine - INFO - {counts}\n')
    return str(work_dir)


def test_finished_runs_form_a_table_sorted_by_miou_and_unfinished_ones_a_reason(tmp_path, capsys):
    snella = fake_run(tmp_path, 'snella_run', dict(type='SNELLABackbone', snella=dict(kernel='snella')), 30.0,
                      'SNELLA adapted 24 Linear layers (blocks.*); trainable 9,288 of 68,392 parameters (13.580%)')
    bitfit = fake_run(tmp_path, 'bitfit_run', dict(type='PEFTBackbone', method=dict(type='bitfit')), 40.0,
                      'bitfit: 1,234 of 60,000 parameters trainable (2.057%) in 20 tensors', memory=False)
    lora = fake_run(tmp_path, 'lora_run', dict(type='SNELLABackbone', snella=dict(kernel='linear')), 20.0,
                    'SNELLA adapted 24 Linear layers (blocks.*); trainable 9,216 of 68,320 parameters (13.490%)')
    unfinished = tmp_path / 'crashed'
    (unfinished / '20260101_000000' / 'vis_data').mkdir(parents=True)
    (unfinished / 'method_config.py').write_text('model = dict(backbone=dict(type="TimmViT"))\n')
    (unfinished / '20260101_000000' / 'vis_data' / 'scalars.json').write_text('{"iter": 10, "time": 0.5}\n')
    empty = tmp_path / 'empty'
    empty.mkdir()
    md, png, out = tmp_path / 'runs.md', tmp_path / 'runs.png', tmp_path / 'runs.json'
    main([snella, bitfit, str(unfinished), lora, str(empty), '--out-md', str(md), '--out-png', str(png),
          '--out-json', str(out)])
    table = capsys.readouterr().out
    rows = [line for line in table.splitlines() if line.startswith('| ') and '_run' in line]
    assert [row.split(' | ')[0] for row in rows] == ['| bitfit_run', '| snella_run', '| lora_run']
    assert rows[0] == '| bitfit_run | bitfit | 40.00 | 45.00 | 1,234 | 60,000 | 2.057 | - | 0.400 | 20 |'
    assert rows[1] == '| snella_run | snella | 30.00 | 35.00 | 9,288 | 68,392 | 13.581 | 1,200 | 0.400 | 20 |'
    assert '| lora_run | lora (fused) |' in rows[2]
    assert '- skipped crashed: no validation (mIoU) logged: not finished' in table
    assert '- skipped empty: no dumped config' in table
    assert md.read_text() == table and png.stat().st_size > 0
    result = json.loads(out.read_text())
    assert [run['run'] for run in result['runs']] == ['bitfit_run', 'snella_run', 'lora_run']
    assert result['runs'][0]['peak_memory_mb'] is None and result['runs'][1]['peak_memory_mb'] == 1200
    assert {run['run'] for run in result['skipped']} == {'crashed', 'empty'}


def test_method_names_come_from_the_backbone_config():
    assert method_name(dict(type='SNELLABackbone', snella=dict(kernel='snella', rank=8))) == 'snella'
    assert method_name(dict(type='SNELLABackbone', snella=dict(kernel='rbf'))) == 'snella (rbf)'
    assert method_name(dict(type='PEFTBackbone', method=dict(type='peft', config=dict(type='LoraConfig')))) == \
        'peft LoraConfig'
    assert method_name(dict(type='TimmViT', frozen=True)) == 'frozen'
    assert method_name(dict(type='TimmViT')) == 'full'


def test_a_real_four_iteration_run_is_read(config_file, tmp_path, monkeypatch, capsys):
    work_dir = tmp_path / 'tiny_snella'  # 4 iterations: the tiny config's allocator warms up for 3
    run_tool(monkeypatch, 'train.py', config_file, '--work-dir', str(work_dir), '--cfg-options',
             'train_cfg.max_iters=4', 'train_cfg.val_interval=4', 'default_hooks.logger.interval=1',
             f'visualizer.name=visualizer:{work_dir}')
    capsys.readouterr()
    result = main([str(work_dir)])
    assert result['skipped'] == []
    (run,) = result['runs']
    assert run['method'] == 'snella' and run['iters'] == 4 and 0 <= run['mIoU'] <= 100
    assert run['peak_memory_mb'] is None  # CPU: mmengine logs no memory
    assert 0 < run['trainable'] < run['total']
    # the logged counts are those of the backbone the dumped config builds
    assert (run['trainable'], run['total']) == built_counts(str(work_dir / 'config.py'))


def test_the_demo_script_parses_and_its_method_configs_build(tmp_path):
    subprocess.run(['bash', '-n', DEMO_SCRIPT], check=True)
    done = subprocess.run(['bash', DEMO_SCRIPT], env=dict(os.environ, ROOT=str(tmp_path), CONFIGS_ONLY='1',
                                                          PYTHON=sys.executable),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    configs = sorted(os.listdir(tmp_path / 'configs'))
    assert configs == ['adapter_demo.py', 'bitfit_demo.py', 'ln-tune_demo.py', 'lora_demo.py', 'snella_demo.py']
    from mmengine.config import Config
    names = set()
    for config in configs:
        path = str(tmp_path / 'configs' / config)
        cfg = Config.fromfile(path)
        names.add(method_name(cfg.model.backbone))
        assert not any(hook.type == 'SNELLAAllocatorHook' for hook in cfg.custom_hooks) or config == 'snella_demo.py'
        trainable, total = built_counts(path)
        assert 0 < trainable < total
    assert names == {'snella', 'lora (fused)', 'bitfit', 'ln_tune', 'adapter'}
