"""A console a user can read: mmengine's start-up dumps go to the log file only.

mmengine's Runner prints the system environment, the whole config (hundreds of lines) and the hook order before
the first iteration, so the first progress line of a run sits screens down. ``QuietConsoleRunner`` keeps those
records in the log file (and the config also in ``work_dir/<config>.py``, as mmengine always writes it) and shows
one line saying where they are. Everything else, warnings and errors included, reaches the console as before.
"""
import logging
from typing import Union

from mmengine.logging import MMLogger
from mmengine.runner import Runner

# How each start-up dump (and each deprecation notice mmengine's own hooks trigger) begins.
STARTUP_DUMP_PREFIXES = (
    '\n' + '-' * 60 + '\nSystem environment:',
    'Config:\n',
    'Hooks will be executed in the following order:',
    '"FileClient" will be deprecated in future.',
    '"HardDiskBackend" is the alias of "LocalBackend"',
)


class StartupDumpFilter(logging.Filter):
    """Drops mmengine's start-up dumps from the handler it is attached to."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(STARTUP_DUMP_PREFIXES)


def keep_startup_dumps_off_console(logger: MMLogger) -> None:
    """Attach ``StartupDumpFilter`` to ``logger``'s console handler (not to its log file)."""
    for handler in logger.handlers:
        is_console = isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler)
        if is_console and not any(isinstance(f, StartupDumpFilter) for f in handler.filters):
            handler.addFilter(StartupDumpFilter())


class QuietConsoleRunner(Runner):
    """mmengine's ``Runner`` whose console leaves out the environment, config and hook-order dumps."""

    def build_logger(self, log_level: Union[int, str] = 'INFO', log_file=None, **kwargs) -> MMLogger:
        logger = super().build_logger(log_level=log_level, log_file=log_file, **kwargs)
        keep_startup_dumps_off_console(logger)
        if logger.log_file:
            logger.info(f'environment, full config and hook order: {logger.log_file}')
        return logger
