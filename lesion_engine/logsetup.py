"""Log output of the command-line programs: one handler on each of the project's package loggers.

The packages are libraries and, as pynetdicom does, only add a :class:`logging.NullHandler` to their
package logger; they never configure handlers or the root logger. A command-line program (``lesion-ai``,
``python -m training.default_model``, ``python -m benchmarks``) calls :func:`configure_cli_logging` once
it knows the wanted level: a handler writing to standard error goes onto the ``lesion_engine``,
``training``, ``orthanc_plugin`` and ``benchmarks`` loggers, and their level is set. The root logger is
left alone, so an application embedding the packages keeps its own logging set-up.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

logger = logging.getLogger(__name__)

__all__ = ["CLI_FORMAT", "CLI_PACKAGES", "TIMESTAMPED_FORMAT", "configure_cli_logging"]

CLI_PACKAGES: tuple[str, ...] = ("lesion_engine", "training", "orthanc_plugin", "benchmarks")
"""The package loggers a command-line program configures."""

CLI_FORMAT = "%(levelname)s %(name)s: %(message)s"
"""Default format of the command-line log lines."""

TIMESTAMPED_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
"""Format with the time, for long runs (training, workers)."""


class _CliHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to the standard error of the moment (it may be replaced after set-up, e.g. by tests)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    def emit(self, record: logging.LogRecord) -> None:
        """Write one record to the current ``sys.stderr``."""
        self.stream = sys.stderr
        super().emit(record)


def configure_cli_logging(
    level: int, *, fmt: str = CLI_FORMAT, packages: Sequence[str] = CLI_PACKAGES
) -> None:
    """Send the project's log records at ``level`` and above to standard error.

    Idempotent: calling it again changes the level and the format, and never adds a second handler.

    Parameters
    ----------
    level : int
        A :mod:`logging` level (``logging.INFO``, ...).
    fmt : str, optional
        The :class:`logging.Formatter` format of the lines.
    packages : sequence of str, optional
        The package loggers to configure; by default :data:`CLI_PACKAGES`.

    Raises
    ------
    ValueError
        ``level`` is not a logging level, or ``packages`` is empty or names the root logger.
    """
    if isinstance(level, bool) or not isinstance(level, int) or level < 0:
        raise ValueError(f"level must be a logging level such as logging.INFO, got {level!r}")
    if isinstance(packages, str) or not packages or any(not name for name in packages):
        raise ValueError(
            f"packages must be a non-empty list of package logger names (not the root logger), got {packages!r}"
        )
    formatter = logging.Formatter(fmt)
    for name in packages:
        package_logger = logging.getLogger(name)
        package_logger.setLevel(level)
        handlers = [h for h in package_logger.handlers if isinstance(h, _CliHandler)]
        if not handlers:
            handler = _CliHandler()
            package_logger.addHandler(handler)
            handlers = [handler]
        for handler in handlers:
            handler.setFormatter(formatter)
