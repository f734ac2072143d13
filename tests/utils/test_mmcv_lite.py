"""A deploy environment without snella_seg runs mmseg on mmcv-lite through the one stdlib-only file
snella_seg/utils/mmcv_lite.py.

Regression: `from mmseg.apis import init_model` failed there with `No module named 'mmcv._ext'` unless snella_seg
was imported first, so "merged ViT models need no snella_seg" held only with a compiled mmcv.
"""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MMCV_LITE = REPO / 'snella_seg' / 'utils' / 'mmcv_lite.py'
# Blocks snella_seg (as in an environment where it is not installed), then uses mmseg's inference API.
DEPLOY_SCRIPT = """
import sys
sys.modules['snella_seg'] = None
{setup}
from mmseg.apis import inference_model, init_model
print('mmseg.apis imported; mmcv._ext is', type(sys.modules['mmcv._ext']).__name__, 'args', sys.argv[1:],
      'path', sys.path[0])
"""


def mmcv_is_lite() -> bool:
    """Asked in a fresh process: once snella_seg is imported here (by any other test), the stand-in is registered
    as mmcv._ext and this process can no longer tell; these tests then skipped in every full run."""
    probe = "import importlib.util, sys; sys.exit(importlib.util.find_spec('mmcv._ext') is None)"
    return subprocess.run([sys.executable, '-c', probe]).returncode == 1


pytestmark = pytest.mark.skipif(not mmcv_is_lite(), reason='a compiled mmcv needs no stand-in')


def run(tmp_path: Path, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *argv], cwd=tmp_path, capture_output=True, text=True, timeout=300)


def test_mmseg_alone_fails_on_mmcv_lite(tmp_path):
    (tmp_path / 'deploy.py').write_text(DEPLOY_SCRIPT.format(setup=''))
    result = run(tmp_path, 'deploy.py')
    assert result.returncode != 0 and "No module named 'mmcv._ext'" in result.stderr


def test_mmcv_lite_by_path_runs_a_script_without_snella_seg(tmp_path):
    (tmp_path / 'deploy.py').write_text(DEPLOY_SCRIPT.format(setup=''))
    result = run(tmp_path, str(MMCV_LITE), 'deploy.py', 'merged_config.py', 'merged.pth')
    assert result.returncode == 0, result.stderr
    assert "mmcv._ext is _MissingCompiledOps args ['merged_config.py', 'merged.pth']" in result.stdout
    assert result.stdout.strip().endswith(f'path {tmp_path}')  # the script's folder, as plain python gives it


def test_mmcv_lite_copied_next_to_a_script_is_imported_before_mmseg(tmp_path):
    shutil.copy(MMCV_LITE, tmp_path / 'mmcv_lite.py')
    setup = 'import mmcv_lite\nmmcv_lite.ensure_mmcv_ops_importable()'
    (tmp_path / 'deploy.py').write_text(DEPLOY_SCRIPT.format(setup=setup))
    result = run(tmp_path, 'deploy.py')
    assert result.returncode == 0, result.stderr
    assert 'mmcv._ext is _MissingCompiledOps' in result.stdout


def test_mmcv_lite_without_a_script_says_how_to_call_it(tmp_path):
    result = run(tmp_path, str(MMCV_LITE))
    assert result.returncode != 0 and 'usage: python mmcv_lite.py SCRIPT.py' in result.stderr
