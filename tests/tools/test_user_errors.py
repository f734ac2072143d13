"""User errors end a tool with one line and a non-zero status; --debug or SNELLA_SEG_DEBUG shows the traceback."""
import os.path as osp
import subprocess
import sys

import pytest

from snella_seg.apis.console import DEBUG_VARIABLE, USER_ERRORS, run_tool as run_reporting_user_errors

from tests.helpers.paths import DEMO_CONFIG, REPO
from tests.helpers.tools import run_tool


def test_a_missing_config_prints_one_line_and_no_traceback(tmp_path):
    result = subprocess.run([sys.executable, osp.join(REPO, 'tools', 'train.py'), str(tmp_path / 'nowhere.py')],
                            env={'PYTHONPATH': REPO, 'PATH': '/usr/bin:/bin'}, capture_output=True, text=True,
                            timeout=300, cwd=str(tmp_path))
    assert result.returncode == 1
    assert result.stderr.startswith(f"error: config file '{tmp_path / 'nowhere.py'}' does not exist")
    assert 'Traceback' not in result.stderr and result.stderr.count('\n') == 1


def test_a_missing_checkpoint_of_the_test_tool_prints_one_line(tmp_path, monkeypatch, capsys):
    with pytest.raises(SystemExit) as stop:
        run_tool(monkeypatch, 'test.py', DEMO_CONFIG, str(tmp_path / 'nowhere.pth'), '--work-dir', str(tmp_path))
    assert stop.value.code == 1
    assert capsys.readouterr().err.startswith(f"error: checkpoint '{tmp_path / 'nowhere.pth'}' does not exist")


def test_debug_flag_and_variable_show_the_traceback(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match='nowhere.py'):
        run_tool(monkeypatch, 'train.py', str(tmp_path / 'nowhere.py'), '--debug')
    monkeypatch.setenv(DEBUG_VARIABLE, '1')
    with pytest.raises(FileNotFoundError, match='nowhere.py'):
        run_tool(monkeypatch, 'train.py', str(tmp_path / 'nowhere.py'))


def test_the_debug_variable_is_documented_in_the_help(monkeypatch, capsys):
    with pytest.raises(SystemExit):
        run_tool(monkeypatch, 'test.py', '--help')
    shown = capsys.readouterr().out
    assert '--debug' in shown and DEBUG_VARIABLE in shown


@pytest.mark.parametrize('error_type', USER_ERRORS)
def test_each_user_error_prints_its_message_alone(error_type, capsys):
    def fail():
        raise error_type('what to fix')
    with pytest.raises(SystemExit) as stop:
        run_reporting_user_errors(fail)
    assert stop.value.code == 1 and capsys.readouterr().err == 'error: what to fix\n'


def test_a_bug_keeps_its_traceback():
    def fail():
        raise KeyError('a bug')
    with pytest.raises(KeyError):
        run_reporting_user_errors(fail)


def test_a_missing_pretrained_file_then_data_root_name_the_commands_that_fetch_them(tmp_path, monkeypatch, capsys):
    """A new user's first two stops on the ViT-L ADE20K config say where the weights and the data come from."""
    monkeypatch.chdir(tmp_path)
    config = osp.join(REPO, 'configs', 'snella_vit-l_ade20k.py')
    with pytest.raises(SystemExit) as stop:
        run_tool(monkeypatch, 'train.py', config, '--work-dir', str(tmp_path / 'work'))
    error = capsys.readouterr().err
    assert stop.value.code == 1 and error.count('\n') == 1
    assert "'checkpoints/vit_large_patch16_224.augreg_in21k_ft_in1k.safetensors'" in error
    assert 'Fetch it with: python tools/download_weights.py vit-l\n' in error
    (tmp_path / 'checkpoints').mkdir()
    (tmp_path / 'checkpoints' / 'vit_large_patch16_224.augreg_in21k_ft_in1k.safetensors').touch()
    with pytest.raises(SystemExit) as stop:
        run_tool(monkeypatch, 'train.py', config, '--work-dir', str(tmp_path / 'work'))
    error = capsys.readouterr().err
    assert stop.value.code == 1 and "data_root 'data/ade/ADEChallengeData2016' does not exist" in error
    assert 'Make it with: python tools/prepare_data.py ade20k.' in error


def test_a_missing_gated_or_unknown_pretrained_file_says_how_to_get_it(tmp_path):
    from mmengine.config import Config
    from snella_seg.apis.weights import check_pretrained_files
    dinov3 = Config.fromfile(osp.join(REPO, 'configs', 'snella_dinov3-l_ade20k.py')).model
    with pytest.raises(FileNotFoundError, match='gated release.*dinov3-downloads'):
        check_pretrained_files(dinov3.to_dict())
    own = dict(backbone=dict(init_cfg=dict(type='Pretrained', checkpoint=str(tmp_path / 'mine.pth'))))
    with pytest.raises(FileNotFoundError, match=r'model\.backbone\.init_cfg\.checkpoint.*put the file there'):
        check_pretrained_files(own)
    (tmp_path / 'mine.pth').touch()
    check_pretrained_files(own)
