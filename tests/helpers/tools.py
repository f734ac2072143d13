"""Running the repository's tools/ scripts as a user does: in this process, or as two CPU processes."""
import os
import os.path as osp
import runpy
import socket
import subprocess
import sys
from typing import Dict, List, Tuple

from .paths import REPO


def run_tool(monkeypatch, script: str, *args: str) -> None:
    """``python tools/SCRIPT ARGS`` in this process, so fixtures such as capsys see what it prints."""
    monkeypatch.setattr(sys, 'argv', [script, *args])
    runpy.run_path(osp.join(REPO, 'tools', script), run_name='__main__')


def dist_train_command(config: str, work_dir: str, *options: str) -> Tuple[List[str], Dict[str, str]]:
    """Command and environment of ``bash tools/dist_train.sh CONFIG 2`` on CPU (gloo), one thread per process, on a
    free port."""
    with socket.socket() as probe:
        probe.bind(('127.0.0.1', 0))
        port = probe.getsockname()[1]
    env = dict(os.environ, PYTHON=sys.executable, PYTHONPATH=REPO, PORT=str(port), OMP_NUM_THREADS='1',
               CUDA_VISIBLE_DEVICES='')
    return ['bash', osp.join(REPO, 'tools', 'dist_train.sh'), config, '2', '--work-dir', work_dir, *options], env


def dist_train(config: str, work_dir: str, *options: str) -> subprocess.CompletedProcess:
    """``bash tools/dist_train.sh CONFIG 2`` on CPU (gloo), one thread per process, on a free port."""
    command, env = dist_train_command(config, work_dir, *options)
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)


def failure_report(result: subprocess.CompletedProcess) -> str:
    return f'exit code {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}'
