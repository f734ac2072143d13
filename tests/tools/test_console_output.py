"""The first run a user starts prints a screenful, not 2,000 lines, before its first progress line.

Regression: at ViT-B about 2,180 lines came first: setuptools' and mmseg's deprecation warnings, one optimizer line
per parameter option and one warning per frozen tensor, mmengine's environment, config and hook-order dumps.
"""
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from snella_seg.utils.mmcv_lite import THIRD_PARTY_NOISE, quiet_third_party_warnings
from snella_seg.datasets.demo_data import make_ade20k_like

REPO = Path(__file__).resolve().parents[2]
DEMO_CONFIG = REPO / 'configs' / 'demo' / 'snella_vit-tiny_demo-ade20k.py'
# One screen. Before the first "Iter(train)" the demo now prints 8 lines: where the environment/config dump went,
# SNELLA's layer summary, mmengine's SyncBN note, the optimizer and scheduler summaries, the allocator line, the
# checkpoint folder (and a label-scan line only when a scan takes seconds).
SCREEN_LINES = 60
NOISE = ('pkg_resources is deprecated', '``build_loss`` would be deprecated', 'avg_non_ignore',
         '`reduce_zero_label` will be deprecated', 'The draw is False', 'please provide the `save_dir`',
         'paramwise_options --', 'is skipped since its requires_grad=False', 'The prefix is not set',
         'System environment:', 'Hooks will be executed in the following order')


def run_tool(tool: str, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS='1', XDG_CACHE_HOME=str(cwd / 'cache'))
    return subprocess.run([sys.executable, str(REPO / 'tools' / tool), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope='module')
def demo_run(tmp_path_factory):
    """The demo config trained for 2 iterations on generated data, from a folder outside the repository."""
    folder = tmp_path_factory.mktemp('first_run')
    data_root = make_ade20k_like(str(folder / 'data'), num_train=4, num_val=2, size=64)
    roots = [f'{loader}.dataset.data_root={data_root}' for loader in ('train_dataloader', 'val_dataloader',
                                                                       'test_dataloader')]
    result = run_tool('train.py', folder, str(DEMO_CONFIG), '--work-dir', 'work', '--cfg-options', *roots,
                      'train_cfg.max_iters=2', 'train_cfg.val_interval=2', 'default_hooks.logger.interval=1')
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return folder, roots, (result.stdout + result.stderr).splitlines()


def test_third_party_warnings_and_per_parameter_lines_are_gone(demo_run):
    _, _, lines = demo_run
    assert [line for line in lines if any(noise in line for noise in NOISE)] == []


def test_first_progress_line_is_on_the_first_screen(demo_run):
    _, _, lines = demo_run
    first_progress = next(index for index, line in enumerate(lines) if 'Iter(train)' in line)
    assert first_progress < SCREEN_LINES, '\n'.join(lines[:first_progress])


def test_the_log_file_keeps_environment_config_and_hook_order(demo_run):
    folder, _, _ = demo_run
    log_text = next((folder / 'work').glob('*/*.log')).read_text()
    assert 'System environment:' in log_text and 'Config:\n' in log_text
    assert 'Hooks will be executed in the following order' in log_text


def test_tta_runs_on_the_demo_config(demo_run):
    folder, roots, _ = demo_run
    result = run_tool('test.py', folder, str(DEMO_CONFIG), 'work/iter_2.pth', '--tta', '--cfg-options', *roots)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert 'mIoU:' in result.stdout
    assert 'The shape of value will convert' not in result.stderr


def test_the_same_warning_text_from_another_module_still_shows():
    message = THIRD_PARTY_NOISE[2][0].replace('\\', '')
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        quiet_third_party_warnings()
        warnings.warn_explicit(message, UserWarning, 'snella_seg/anything.py', 1, module='snella_seg.anything')
        warnings.warn_explicit(message, UserWarning, 'mmseg/models/losses/cross_entropy_loss.py', 1,
                               module='mmseg.models.losses.cross_entropy_loss')
    assert [str(warning.message) for warning in caught] == [message]
