"""tools/merge_snella.py and tools/demo.py start in a fresh process and take --cfg-options like train.py."""
import os.path as osp
import subprocess
import sys

import pytest
from mmengine.config import Config

from tests.helpers.log_capture import log_from_here
from tests.helpers.paths import REPO
from tests.helpers.tools import run_tool


def test_merge_tool_takes_cfg_options(delta_checkpoint, tmp_path, monkeypatch):
    config, checkpoint = delta_checkpoint
    out_dir = tmp_path / 'deploy'
    run_tool(monkeypatch, 'merge_snella.py', config, checkpoint, str(out_dir), '--export-deltas',
             '--cfg-options', 'default_hooks.logger.interval=7')
    assert Config.fromfile(str(out_dir / 'merged_config.py')).default_hooks.logger.interval == 7
    assert (out_dir / 'snella_deltas.safetensors').is_file()


@pytest.mark.parametrize('script', ['merge_snella.py', 'demo.py'])
def test_tool_starts_and_offers_cfg_options(script):
    """In a fresh process: mmseg imports only after snella_seg where mmcv has no compiled ops."""
    shown = subprocess.run([sys.executable, osp.join(REPO, 'tools', script), '--help'], check=True,
                           capture_output=True, text=True).stdout
    assert '--cfg-options' in shown


def test_merge_tool_prints_its_output_paths_without_the_per_parameter_report(delta_checkpoint, tmp_path, monkeypatch,
                                                                             capsys):
    config, checkpoint = delta_checkpoint
    printed = log_from_here(capsys)
    run_tool(monkeypatch, 'merge_snella.py', config, checkpoint, str(tmp_path / 'deploy'), '--export-deltas')
    shown = printed()
    assert 'torch.Size(' not in shown
    assert str(tmp_path / 'deploy' / 'snella_deltas.safetensors') in shown


def test_init_model_keeps_the_report_off_the_console_and_only_while_it_builds(delta_checkpoint, capsys):
    from mmengine.logging import print_log

    from snella_seg.apis import init_model
    printed = log_from_here(capsys)
    init_model(delta_checkpoint[0], delta_checkpoint[1])
    print_log('\nafter - torch.Size([1]): a record shaped like the report, after init_model', logger='current')
    shown = printed()
    assert shown.count('torch.Size(') == 1 and 'after init_model' in shown
