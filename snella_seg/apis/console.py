"""A console a user can read: mmengine's start-up dumps go to the log file only, user errors print one line.

mmengine's Runner prints the system environment, the whole config (hundreds of lines) and the hook order before
the first iteration, so the first progress line of a run sits screens down. ``QuietConsoleRunner`` keeps those
records in the log file (and the config also in ``work_dir/<config>.py``, as mmengine always writes it) and shows
one line saying where they are. Everything else, warnings and errors included, reaches the console as before.

The tools end on a user's mistake (a missing file, bad data, a refused checkpoint or resume) with its message
alone, without a Python traceback; ``--debug`` or ``SNELLA_SEG_DEBUG=1`` shows the traceback. A Ctrl-C ends with
one line per process (naming its rank in a distributed run) and exit status 130, as a shell reports an interrupt.
"""
import argparse
import contextlib
import logging
import os
import re
import signal
import sys
import threading
from typing import Callable, Iterator, Optional, Union

from mmengine.dist import get_dist_info
from mmengine.logging import MMLogger
from mmengine.runner import Runner

from ..datasets import DatasetError
from ..engine.hooks.resume_compatibility_hook import ResumeRefusedError
from ..utils.checkpoint_loading import UnsafeCheckpointError

# Errors whose message tells the user what to fix; anything else is a bug and keeps its traceback.
USER_ERRORS = (FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError, DatasetError,
               UnsafeCheckpointError, ResumeRefusedError)
DEBUG_VARIABLE = 'SNELLA_SEG_DEBUG'
# What a shell reports for a command stopped by Ctrl-C: 128 + SIGINT.
INTERRUPTED_STATUS = 128 + signal.SIGINT

# How each start-up dump (and each deprecation notice mmengine's own hooks trigger) begins.
STARTUP_DUMP_PREFIXES = (
    '\n' + '-' * 60 + '\nSystem environment:',
    'Config:\n',
    'Hooks will be executed in the following order:',
    '"FileClient" will be deprecated in future.',
    '"HardDiskBackend" is the alias of "LocalBackend"',
)


# One record of mmengine's per-parameter initialisation report (BaseModule._dump_init_info without a log file).
INIT_REPORT_RECORD = re.compile(r'\n\S+ - torch\.Size\(')


class InitReportFilter(logging.Filter):
    """Drops the records of mmengine's per-parameter initialisation report from the handler it is attached to."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Tell whether ``record`` reaches the handler.

        Args:
            record: the log record.

        Returns:
            False for a record of the initialisation report.
        """
        return not INIT_REPORT_RECORD.match(record.getMessage())


def _console_handlers(logger: MMLogger) -> list:
    return [handler for handler in logger.handlers
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler)]


@contextlib.contextmanager
def init_reports_off_console() -> Iterator[None]:
    """Keep mmengine's per-parameter initialisation report off the console while models are built.

    The report is a line pair per parameter, hundreds of lines; a logger with a log file still gets it there, as
    mmengine writes it.

    Yields:
        Nothing; the filter is removed on exit.
    """
    handlers = _console_handlers(MMLogger.get_current_instance())
    report_filter = InitReportFilter()
    for handler in handlers:
        handler.addFilter(report_filter)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(report_filter)


class StartupDumpFilter(logging.Filter):
    """Drops mmengine's start-up dumps from the handler it is attached to."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Tell whether ``record`` reaches the handler.

        Args:
            record: the log record.

        Returns:
            False for a start-up dump.
        """
        return not record.getMessage().startswith(STARTUP_DUMP_PREFIXES)


def keep_startup_dumps_off_console(logger: MMLogger) -> None:
    """Attach ``StartupDumpFilter`` to ``logger``'s console handler (not to its log file).

    Args:
        logger: the run's logger; a handler that already has the filter keeps one.
    """
    for handler in _console_handlers(logger):
        if not any(isinstance(f, StartupDumpFilter) for f in handler.filters):
            handler.addFilter(StartupDumpFilter())


class QuietConsoleRunner(Runner):
    """mmengine's ``Runner`` whose console leaves out the environment, config and hook-order dumps."""

    def build_logger(self, log_level: Union[int, str] = 'INFO', log_file: Optional[str] = None,
                     **kwargs) -> MMLogger:
        """Build mmengine's logger with the start-up dumps kept off its console, and say where they went.

        Args:
            log_level: level of the logger's handlers.
            log_file: the log file; None lets mmengine name it in the work dir.
            **kwargs: passed on to ``MMLogger``.

        Returns:
            The run's logger.
        """
        logger = super().build_logger(log_level=log_level, log_file=log_file, **kwargs)
        keep_startup_dumps_off_console(logger)
        if logger.log_file:
            logger.info(f'environment, full config and hook order: {logger.log_file}')
        return logger


def add_debug_argument(parser: argparse.ArgumentParser) -> None:
    """Add ``--debug``, which shows the traceback of user errors (``run_tool`` prints their message alone).

    Args:
        parser: the tool's argument parser.
    """
    parser.add_argument('--debug', action='store_true',
                        help='show the Python traceback of user errors (missing files, bad data, refused '
                             f'checkpoints), which otherwise print one line; also set by {DEBUG_VARIABLE}=1')


def _interrupt_once(signum: int, frame: object) -> None:
    """SIGINT handler that interrupts once and ignores later ones.

    torchrun forwards the Ctrl-C every rank already got; a second ``KeyboardInterrupt`` on the way out would print
    its traceback.

    Args:
        signum: the signal number.
        frame: the interrupted frame.

    Raises:
        KeyboardInterrupt: always.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt


@contextlib.contextmanager
def _sigint_interrupts_once() -> Iterator[None]:
    """Install ``_interrupt_once`` where Python's own SIGINT handler is (in the main thread).

    Python's handler comes back on exit, except after an interrupt: the process is on its way out, and a forwarded
    Ctrl-C must not stop it.

    Yields:
        Nothing.

    Raises:
        KeyboardInterrupt: the interrupt, passed on.
    """
    if threading.current_thread() is not threading.main_thread() or (
            signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield
        return
    signal.signal(signal.SIGINT, _interrupt_once)
    interrupted = False
    try:
        yield
    except KeyboardInterrupt:
        interrupted = True
        raise
    finally:
        if not interrupted:
            signal.signal(signal.SIGINT, signal.default_int_handler)


def interrupted_message() -> str:
    """The line a tool ends with on Ctrl-C.

    Returns:
        ``interrupted``, naming the rank in a distributed run.
    """
    rank, world_size = get_dist_info()
    return f'interrupted (rank {rank} of {world_size})' if world_size > 1 else 'interrupted'


def run_tool(main: Callable[[], None], debug: bool = False) -> None:
    """Run a tool's ``main``; a user error prints ``error: <message>`` to stderr and exits with status 1.

    A Ctrl-C (SIGINT) prints ``interrupted`` (with the rank when distributed) and exits with status 130; ``--debug``
    shows its traceback too.

    Args:
        main: the tool's work.
        debug: let user errors and interrupts raise with their traceback (also when ``SNELLA_SEG_DEBUG`` is set and
            not 0).

    Raises:
        SystemExit: with status 1, after a user error's message, or 130 after an interrupt.
        KeyboardInterrupt: the interrupt, with ``debug``.
    """
    debug = debug or os.environ.get(DEBUG_VARIABLE, '0') not in ('', '0')
    try:
        with _sigint_interrupts_once():
            main()
    except USER_ERRORS as error:
        if debug:
            raise
        print(f'error: {error}', file=sys.stderr)
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        if debug:
            raise
        print(interrupted_message(), file=sys.stderr)
        raise SystemExit(INTERRUPTED_STATUS) from None
