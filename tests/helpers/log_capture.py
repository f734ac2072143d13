"""Reading what mmengine's logger prints during one test."""
import itertools
from typing import Callable

from mmengine.logging import MMLogger

LOGGER_NUMBERS = itertools.count()


def log_from_here(capsys) -> Callable[[], str]:
    """A reader of what mmengine's current logger prints from here on: a logger instance created inside the test
    writes to the stdout that capsys captures."""
    MMLogger.get_instance(f'snella-backbone-test-{next(LOGGER_NUMBERS)}')
    capsys.readouterr()
    return lambda: capsys.readouterr().out
