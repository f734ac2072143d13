"""tools/dist_train.sh, dist_test.sh and slurm_train.sh take paths relative to where they are run, like train.py.

Regression: they changed into the repository first, so `bash tools/dist_train.sh configs/x.py 2` from another
folder said the config did not exist. A stand-in python (and srun) records the command they would run.
"""
import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RECORDER = '#!/bin/sh\n{ pwd; echo "$PYTHONPATH"; for arg in "$@"; do echo "$arg"; done; } > "$RECORD"\n'


def run_script(tmp_path: Path, script: str, *args: str) -> list:
    """Run ``script`` from a folder outside the repository; returns cwd, PYTHONPATH and the recorded argv."""
    stand_ins = tmp_path / 'bin'
    stand_ins.mkdir()
    for name in ('python', 'srun'):
        (stand_ins / name).write_text(RECORDER)
        (stand_ins / name).chmod(0o755)
    caller = tmp_path / 'elsewhere'
    caller.mkdir()
    record = tmp_path / 'record.txt'
    env = dict(os.environ, PATH=f'{stand_ins}:{os.environ["PATH"]}', PYTHON=str(stand_ins / 'python'),
               RECORD=str(record), PYTHONPATH='/earlier/path')
    subprocess.run(['bash', str(REPO / 'tools' / script), *args], cwd=caller, env=env, check=True,
                   capture_output=True, timeout=60)
    return record.read_text().splitlines()


def test_dist_train_keeps_the_callers_folder_and_finds_train_py(tmp_path):
    cwd, pythonpath, *argv = run_script(tmp_path, 'dist_train.sh', 'configs/x.py', '2', '--work-dir', 'out')
    assert cwd == str(tmp_path / 'elsewhere')
    assert pythonpath == f'{REPO}:/earlier/path'
    assert argv[-6:] == [str(REPO / 'tools' / 'train.py'), 'configs/x.py', '--launcher', 'pytorch', '--work-dir',
                         'out']
    assert '--nproc_per_node=2' in argv


def test_dist_test_keeps_the_callers_folder_and_finds_test_py(tmp_path):
    cwd, _, *argv = run_script(tmp_path, 'dist_test.sh', 'configs/x.py', 'ckpt.pth', '1', '--tta')
    assert cwd == str(tmp_path / 'elsewhere')
    assert argv[-6:] == [str(REPO / 'tools' / 'test.py'), 'configs/x.py', 'ckpt.pth', '--launcher', 'pytorch',
                         '--tta']


def test_slurm_train_keeps_the_callers_folder_and_finds_train_py(tmp_path):
    cwd, pythonpath, *argv = run_script(tmp_path, 'slurm_train.sh', 'partition', 'job', 'configs/x.py')
    assert cwd == str(tmp_path / 'elsewhere')
    assert pythonpath.startswith(f'{REPO}:')
    assert argv[-3:] == [str(REPO / 'tools' / 'train.py'), 'configs/x.py', '--launcher=slurm']
