"""A Ctrl-C of a 2-process run ends with one line per process, not a screen of tracebacks, and exit status 130.

The terminal sends SIGINT to its whole foreground process group (torchrun and both ranks); the test does the same
to the group it starts, once training runs.
"""
import os
import selectors
import signal
import subprocess
import time

import pytest

from snella_seg.apis.console import run_tool
from tests.helpers.configs import tiny_config
from tests.helpers.tools import dist_train_command

STARTUP_SECONDS = 240
SHUTDOWN_SECONDS = 60


def read_until(process: subprocess.Popen, marker: str, seconds: float) -> str:
    """What ``process`` prints until a line holds ``marker`` (or it ends), within ``seconds``."""
    deadline, text = time.monotonic() + seconds, ''
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while marker not in text and time.monotonic() < deadline:
            if selector.select(timeout=1):
                line = process.stdout.readline()
                if not line:
                    break
                text += line
    return text


@pytest.fixture
def sigint_handler_kept():
    """The test process's SIGINT handler, restored after a test that lets ``run_tool`` take an interrupt."""
    handler = signal.getsignal(signal.SIGINT)
    yield
    signal.signal(signal.SIGINT, handler)


def test_a_ctrl_c_ends_a_tool_with_one_line_and_status_130(sigint_handler_kept, capsys):
    def work():
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)  # interrupted long before

    with pytest.raises(SystemExit) as stopped:
        run_tool(work)
    assert stopped.value.code == 130 and capsys.readouterr().err == 'interrupted\n'
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN  # a forwarded second Ctrl-C cannot break the exit


def test_a_tool_that_ends_normally_gives_back_pythons_sigint_handler():
    run_tool(lambda: None)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_ctrl_c_of_a_two_process_run_prints_one_line_per_process(ade_root, tmp_path):
    work_dir = str(tmp_path / 'work')
    config = tmp_path / 'config.py'
    tiny_config(ade_root, work_dir, max_iters=100000, checkpoint_interval=100000).dump(str(config))
    command, env = dist_train_command(str(config), work_dir)
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    try:
        started = read_until(process, 'Iter(train)', STARTUP_SECONDS)
        assert 'Iter(train)' in started, started[-3000:]
        os.killpg(process.pid, signal.SIGINT)
        ending, _ = process.communicate(timeout=SHUTDOWN_SECONDS)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    lines = [line for line in ending.splitlines() if 'Iter(train)' not in line and line.strip()]
    assert process.returncode == 130, ending[-3000:]
    assert 'Traceback' not in ending and len(lines) <= 4, ending[-3000:]
    expected = {'interrupted (rank 0 of 2)', 'interrupted (rank 1 of 2)', 'torchrun: stopped by SIGINT'}
    assert expected <= set(lines), ending[-3000:]
