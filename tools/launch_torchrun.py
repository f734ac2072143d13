"""torchrun for tools/dist_train.sh and dist_test.sh, whose Ctrl-C ends with one line per process, not tracebacks.

A Ctrl-C reaches every process of the terminal's group: each rank (train.py, test.py) prints ``interrupted (rank R
of W)`` and exits with status 130. torchrun itself would log that it forwards the signal to each worker and end with
the traceback of its ``SignalException``; here those notices stay off the console and it prints one line and exits
with 128 + the signal number, as a shell reports a stopped command. Everything else is torchrun's own behaviour and
output, failures of a worker included.
"""
import logging
import signal
import sys

from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.run import main

# The loggers and message formats of torchrun's notices while it stops its workers on a signal.
SHUTDOWN_LOGGERS = ('torch.distributed.elastic.agent.server.api', 'torch.distributed.elastic.multiprocessing.api')
SHUTDOWN_NOTICES = ('Received %s death signal', 'Sending process %s closing signal')


class ShutdownNoticeFilter(logging.Filter):
    """Drops torchrun's notices that it stops its workers on a signal (one per worker)."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Tell whether ``record`` is logged.

        Args:
            record: the log record.

        Returns:
            False for a shutdown notice.
        """
        return not str(record.msg).startswith(SHUTDOWN_NOTICES)


def launch() -> None:
    """Run torchrun on this process's arguments; a signal that stops it prints one line.

    Raises:
        SystemExit: with 128 + the signal number when a signal stopped the run.
    """
    for name in SHUTDOWN_LOGGERS:
        logging.getLogger(name).addFilter(ShutdownNoticeFilter())
    try:
        main()
    except SignalException as stopped:
        print(f'torchrun: stopped by {signal.Signals(stopped.sigval).name}', file=sys.stderr)
        raise SystemExit(128 + stopped.sigval) from None


if __name__ == '__main__':
    launch()
