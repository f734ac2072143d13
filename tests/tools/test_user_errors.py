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
