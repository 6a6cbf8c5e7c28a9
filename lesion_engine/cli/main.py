"""The ``lesion-ai`` command line.

Sub-commands are discovered through the ``lesion_ai.commands`` entry-point group (as pydicom does for its
own CLI), so that ``training`` and ``orthanc_plugin`` can add theirs without the engine importing them.
Each entry point names a function ``register(subparsers)`` that adds one sub-parser and sets its
``func`` default to a callable taking the parsed arguments and returning the exit status.

Log records of the project's packages go to standard error (:func:`lesion_engine.logsetup.configure_cli_logging`):
warnings and errors, with ``-v`` also information, with ``-vv`` debugging.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points
from typing import Any

from lesion_engine import __version__
from lesion_engine.logsetup import configure_cli_logging

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "lesion_ai.commands"

Register = Callable[["argparse._SubParsersAction[argparse.ArgumentParser]"], None]


def build_parser() -> argparse.ArgumentParser:
    """Build the top-level parser with every discovered sub-command.

    Returns
    -------
    argparse.ArgumentParser
        The parser. A sub-command whose entry point fails to load is left out, with a warning that names
        it and the reason (usually a missing optional extra such as ``lesion-ai[training]``).
    """
    parser = argparse.ArgumentParser(
        prog="lesion-ai",
        description="Prostate bpMRI lesion AI: inspect, synthesize, train, run. Research use only; "
        "not a medical device.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv: debug)")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        try:
            register: Any = ep.load()
        except ImportError as exc:
            logger.warning(
                "command %r is unavailable: %s (install the extra that provides it, "
                "e.g. pip install 'lesion-ai[training]')",
                ep.name,
                exc,
            )
            continue
        register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``lesion-ai`` command line and return its exit status."""
    configure_cli_logging(logging.WARNING)  # sub-commands that fail to load are reported
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING if args.verbose == 0 else (logging.INFO if args.verbose == 1 else logging.DEBUG)
    configure_cli_logging(level)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return 2
    status: int = func(args)
    return status


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
