"""Logging of the command lines: the project's progress messages on stdout, one bare line each.

The modules of :mod:`matter_model` and :mod:`pipelines` log through
``logging.getLogger(__name__)``; a command line's ``main()`` calls :func:`configure_cli_logging`
once so that their INFO messages read as before, on stdout. Other libraries' loggers, and the
root logger, are left as they are: their INFO chatter stays hidden and their warnings go where
Python sends them by default.
"""

from __future__ import annotations

import logging
import sys

PROJECT_LOGGERS = ("matter_model", "pipelines")


class _Stdout(logging.StreamHandler):
    """A handler writing to ``sys.stdout`` as it is when a record comes (a test may swap it)."""

    def __init__(self) -> None:
        super().__init__(sys.stdout)
        self.setFormatter(logging.Formatter("%(message)s"))

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, _value) -> None:
        pass


def configure_cli_logging(level: int = logging.INFO) -> None:
    """Print the project loggers' messages of ``level`` and above on stdout; idempotent."""
    for name in PROJECT_LOGGERS:
        logger = logging.getLogger(name)
        logger.setLevel(level)
        if not any(isinstance(h, _Stdout) for h in logger.handlers):
            logger.addHandler(_Stdout())
