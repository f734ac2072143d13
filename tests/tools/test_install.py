"""`pip install -e .` into a GPU environment a user already has must keep their torch, torchvision and mmcv.

Users on clusters keep their own torch/CUDA build; requirements.txt pins the CPU demo's stack only.
"""
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from unittest import mock

import setuptools

REPO = Path(__file__).resolve().parents[2]
USER_OWNED = ('torch', 'torchvision', 'mmcv', 'mmcv-lite')


def _install_requires() -> list:
    with mock.patch.object(setuptools, 'setup') as setup:
        exec(compile((REPO / 'setup.py').read_text(), 'setup.py', 'exec'), {'__name__': '__main__'})
    return setup.call_args.kwargs['install_requires']


def _name(requirement: str) -> str:
    return re.split(r'[<>=!~;\[ ]', requirement, maxsplit=1)[0].lower()


def test_the_package_requires_torch_without_pinning_it_and_leaves_mmcv_to_the_user():
    requires = {_name(r): r for r in _install_requires()}
    assert requires['torch'] == 'torch' and requires['torchvision'] == 'torchvision'
    assert not {'mmcv', 'mmcv-lite', 'mmcv-full'} & set(requires)


def test_installing_the_package_into_an_environment_that_has_the_stack_installs_nothing_else():
    result = subprocess.run(
        [sys.executable, '-m', 'pip', 'install', '--dry-run', '--no-index', '--no-build-isolation', '--no-color',
         '-e', str(REPO)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    would_install = [line for line in result.stdout.splitlines() if line.startswith('Would install')]
    assert [package.rsplit('-', 1)[0] for package in would_install[0].split()[2:]] == ['snella-seg']


def test_a_built_wheel_carries_every_config_for_snella_seg_scoped_bases(tmp_path):
    """``snella_seg::`` bases read ``snella_seg/.mim/configs``: a link in the clone, real files in a wheel."""
    assert (REPO / 'snella_seg' / '.mim' / 'configs').resolve() == REPO / 'configs'
    source = tmp_path / 'source'  # a copy, so that the build leaves no build/ or egg-info in the clone
    shutil.copytree(REPO, source, symlinks=True, ignore=shutil.ignore_patterns(
        '.git', '.venv', 'build', 'dist', '*.egg-info', '__pycache__', 'work_dirs', 'data', '.pytest_cache'))
    result = subprocess.run(
        [sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-index', '--no-build-isolation', '--no-color', '-q',
         '-w', str(tmp_path / 'dist'), str(source)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    [wheel] = (tmp_path / 'dist').glob('snella_seg-*.whl')
    packaged = {name.split('/.mim/', 1)[1] for name in zipfile.ZipFile(wheel).namelist() if '/.mim/' in name}
    shipped = {str(path.relative_to(REPO)) for path in (REPO / 'configs').rglob('*') if path.suffix in ('.py', '.md')}
    assert packaged == shipped and 'configs/custom/snella_vit-b_my-dataset.py' in packaged
