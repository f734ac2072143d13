"""`tools/bootstrap.sh` must refuse an install the disk cannot hold before pip starts.

Regression: a CI run once failed halfway through pip with `OSError: [Errno 28] No space left on device`.
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _run_bootstrap_with_free_space(tmp_path: Path, free_kb: int) -> subprocess.CompletedProcess:
    tree = tmp_path / 'clone'
    (tree / 'tools').mkdir(parents=True)
    shutil.copy(REPO / 'tools' / 'bootstrap.sh', tree / 'tools')
    # Should the check ever let this through, pip fails at once on a name no index holds instead of installing.
    (tree / 'requirements.txt').write_text('snella-seg-bootstrap-test-not-a-package==0\n')
    fake_bin = tmp_path / 'bin'
    fake_bin.mkdir()
    fake_df = fake_bin / 'df'
    fake_df.write_text('#!/bin/sh\necho "Filesystem 1024-blocks Used Available Capacity Mounted on"\n'
                       f'echo "fake 0 0 {free_kb} 0% /"\n')
    fake_df.chmod(0o755)
    env = dict(os.environ, PATH=f'{fake_bin}:{os.environ["PATH"]}', PYTHON=sys.executable, PIP_NO_INDEX='1')
    return subprocess.run(['bash', str(tree / 'tools' / 'bootstrap.sh')], env=env, capture_output=True, text=True,
                          timeout=300)


def test_bootstrap_names_a_full_disk_before_installing_anything(tmp_path):
    result = _run_bootstrap_with_free_space(tmp_path, free_kb=1024 * 1024)

    assert result.returncode == 1
    assert 'needs about 7 GB more disk space, but only 1 GB is free' in result.stderr
    assert 'Free some space' in result.stderr
