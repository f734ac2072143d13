"""tools/merge_snella.py and tools/demo.py start in a fresh process and take --cfg-options like train.py."""
import os.path as osp
import subprocess
import sys

import pytest
from mmengine.config import Config

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
