"""The measurement tools run as the README shows them, ``python tools/analysis/<tool>.py``, from any folder: each
finds its siblings in its own folder (Python puts a script's folder first on the path), and none hides a module
installed under the same name."""
import importlib.machinery
import os
import os.path as osp
import subprocess
import sys

import pytest

from tests.helpers.paths import REPO

ANALYSIS = osp.join(REPO, 'tools', 'analysis')
SCRIPTS = ('benchmark.py', 'estimate_memory.py', 'profile_step.py', 'gpu_check.py', 'compare_runs.py')


@pytest.mark.parametrize('script', SCRIPTS)
def test_a_tool_runs_as_a_script_from_another_folder(script, tmp_path):
    done = subprocess.run([sys.executable, osp.join(ANALYSIS, script), '--help'], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300, env=dict(os.environ, PYTHONPATH=REPO))
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith('usage:')


def test_no_tool_module_hides_an_installed_or_standard_module():
    """setup.cfg's ``pythonpath`` puts tools/analysis/ first on the tests' path, as running a tool puts it first on
    the tool's: a module there named like another would hide it."""
    names = sorted(name[:-3] for name in os.listdir(ANALYSIS) if name.endswith('.py'))
    elsewhere = [entry for entry in sys.path if osp.abspath(entry or os.curdir) != ANALYSIS]
    hidden = [name for name in names if name in sys.stdlib_module_names or name in sys.builtin_module_names
              or importlib.machinery.PathFinder.find_spec(name, elsewhere) is not None]
    assert names and not hidden, f'tools/analysis/ modules named like modules found elsewhere: {hidden}'
