"""Library logging: the packages add only a NullHandler; the command lines configure the package loggers."""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Iterator

import pytest

from lesion_engine.logsetup import CLI_PACKAGES, configure_cli_logging


@pytest.fixture
def restored_loggers() -> Iterator[None]:
    """Put the package loggers' handlers and levels back after a test."""
    saved = {
        name: (list(logging.getLogger(name).handlers), logging.getLogger(name).level) for name in CLI_PACKAGES
    }
    root = (list(logging.getLogger().handlers), logging.getLogger().level)
    yield
    for name, (handlers, level) in saved.items():
        package_logger = logging.getLogger(name)
        package_logger.handlers[:] = handlers
        package_logger.setLevel(level)
    assert (list(logging.getLogger().handlers), logging.getLogger().level) == root


def test_importing_the_packages_configures_no_output() -> None:
    code = (
        "import logging, sys\n"
        "import lesion_engine, lesion_engine.intake.preprocess, lesion_engine.engine, lesion_engine.results, training\n"
        "import training.fit.train\n"
        "root = logging.getLogger()\n"
        "bad = [repr(h) for h in root.handlers] + ([] if root.level == logging.WARNING else ['root level'])\n"
        "for name in ('lesion_engine', 'training'):\n"
        "    kinds = [type(h).__name__ for h in logging.getLogger(name).handlers]\n"
        "    if kinds != ['NullHandler']:\n"
        "        bad.append(f'{name}: {kinds}')\n"
        "print('; '.join(bad))\n"
        "sys.exit(1 if bad else 0)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.usefixtures("restored_loggers")
def test_configure_twice_leaves_one_handler_and_spares_the_root(capsys: pytest.CaptureFixture[str]) -> None:
    root_handlers = list(logging.getLogger().handlers)
    configure_cli_logging(logging.WARNING)
    configure_cli_logging(logging.DEBUG, fmt="%(name)s|%(message)s")
    for name in CLI_PACKAGES:
        package_logger = logging.getLogger(name)
        ours = [h for h in package_logger.handlers if isinstance(h, logging.StreamHandler)]
        assert len(ours) == 1, (name, package_logger.handlers)
        assert package_logger.level == logging.DEBUG
    assert logging.getLogger().handlers == root_handlers
    logging.getLogger("lesion_engine.some_module").debug("hello %d", 7)
    assert "lesion_engine.some_module|hello 7" in capsys.readouterr().err


@pytest.mark.usefixtures("restored_loggers")
def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="logging level"):
        configure_cli_logging("INFO")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="root logger"):
        configure_cli_logging(logging.INFO, packages=[""])
    with pytest.raises(ValueError, match="non-empty"):
        configure_cli_logging(logging.INFO, packages="lesion_engine")


def test_cli_logs_to_stderr_without_touching_the_root_logger() -> None:
    code = (
        "import logging, sys\n"
        "from lesion_engine.cli.main import main\n"
        "status = main(['-v', 'inspect', '/nonexistent-folder'])\n"
        "root = logging.getLogger()\n"
        "handlers = logging.getLogger('lesion_engine').handlers\n"
        "ok = status == 2 and not root.handlers and root.level == logging.WARNING\n"
        "ok = ok and logging.getLogger('lesion_engine').level == logging.INFO and len(handlers) == 2\n"
        "sys.exit(0 if ok else 1)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
