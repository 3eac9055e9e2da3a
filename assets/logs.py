"""The project's log messages in Dagster's event log.

:mod:`matter_model` and :mod:`pipelines` log through ``logging.getLogger(__name__)``. An asset
that calls into them wraps the call in :func:`forward_project_logs`, so that their messages show
in the run's logs like the asset's own ``context.log`` lines. (Training runs in a subprocess: its
lines reach Dagster through Pipes instead, see :mod:`matter_model.train`.)
"""

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg

from matter_model.logs import PROJECT_LOGGERS


class _ToDagster(logging.Handler):
    """Hands each record to a Dagster log manager at the record's level."""

    def __init__(self, log: logging.Logger) -> None:
        super().__init__(logging.INFO)
        self.dagster_log = log

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.dagster_log.log(record.levelno, record.getMessage())
        except Exception:
            self.handleError(record)


@contextmanager
def forward_project_logs(context: dg.OpExecutionContext) -> Iterator[None]:
    """Forward the project loggers' INFO and higher records to ``context.log`` while the block
    runs; the loggers' handlers and levels are as before afterwards."""
    handler = _ToDagster(context.log)
    loggers = [logging.getLogger(name) for name in PROJECT_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        if logger.getEffectiveLevel() > logging.INFO:
            logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.removeHandler(handler)
            logger.setLevel(level)
