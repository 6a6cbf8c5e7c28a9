"""How the node's modules hang together: the admin API knows the node only by its protocol, the plugin
inside Orthanc loads neither torch nor the worker, and log handlers are set in one place."""

from __future__ import annotations

import ast
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from orthanc_plugin.admin.node_protocol import AdminNode
from orthanc_plugin.node.logsetup import NODE_PACKAGES, configure_node_logging, remove_orthanc_logging
from orthanc_plugin.node.orthanc_api import OrthancLogHandler
from orthanc_plugin.plugin import NodePlugin
from tests.paths import REPO
from tests.support.fake_orthanc import FakeOrthanc


def _imported_modules(path: Path) -> set[str]:
    """Every module an import statement of ``path`` names (module level, in functions, under TYPE_CHECKING)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def test_admin_does_not_import_the_plugin() -> None:
    imported = _imported_modules(REPO / "orthanc_plugin" / "admin" / "routes.py")
    assert "orthanc_plugin.plugin" not in imported
    assert "orthanc_plugin.admin.node_protocol" in imported
    # neither do the modules it is built on
    for module in (
        "admin/node_protocol",
        "node/source_archive",
        "admin/rules",
        "admin/models",
        "rules/history",
        "admin/ui",
    ):
        assert "orthanc_plugin.plugin" not in _imported_modules(REPO / "orthanc_plugin" / f"{module}.py")


def test_the_plugin_is_an_admin_node() -> None:
    members = {name for name in dir(AdminNode) if not name.startswith("_")}
    assert members == {
        "api",
        "queue",
        "labels",
        "verdicts",
        "ignored",
        "models",
        "rules_history",
        "model_card",
        "health_figures",
        "current_rules",
        "rules_from_text",
        "replace_rules",
        "plan_study",
        "enqueue_study",
    }


def _as_admin_node(plugin: NodePlugin) -> AdminNode:
    return plugin  # mypy checks that NodePlugin implements the protocol


def test_the_plugin_loads_neither_torch_nor_the_worker() -> None:
    code = (
        "import sys\n"
        "import orthanc_plugin.plugin\n"
        "print(','.join(sorted(m for m in ('torch', 'orthanc_plugin.worker.runner', 'orthanc_plugin.worker.main', "
        "'orthanc_plugin.worker.processing') if m in sys.modules)))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == ""


def test_the_package_logger_has_a_null_handler() -> None:
    handlers = logging.getLogger("orthanc_plugin").handlers
    assert any(isinstance(h, logging.NullHandler) for h in handlers)


def test_plugin_logging_goes_to_orthanc_once_and_leaves_the_root_logger_alone() -> None:
    fake = FakeOrthanc()
    root = logging.getLogger()
    before = (list(root.handlers), root.level)
    try:
        configure_node_logging(orthanc=fake)
        configure_node_logging(orthanc=fake)  # idempotent
        for name in NODE_PACKAGES:
            log = logging.getLogger(name)
            assert sum(isinstance(h, OrthancLogHandler) for h in log.handlers) == 1
            assert not log.propagate and log.level == logging.INFO
        logging.getLogger("lesion_engine.intake.roles").warning("a warning of the engine")
        logging.getLogger("orthanc_plugin.worker.runner").debug("not shown")
        assert fake.logs == [("warning", "lesion-ai lesion_engine.intake.roles: a warning of the engine")]
        assert (list(root.handlers), root.level) == before
    finally:
        remove_orthanc_logging()
    assert logging.getLogger("orthanc_plugin").propagate


def test_worker_logging_names_the_worker(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    before = (list(root.handlers), root.level)
    packages = {
        name: (list(logging.getLogger(name).handlers), logging.getLogger(name).level)
        for name in NODE_PACKAGES
    }
    try:
        configure_node_logging(worker="w3")
        logging.getLogger("orthanc_plugin.worker.runner").info("job 1 done")
        assert "INFO [w3] orthanc_plugin.worker.runner: job 1 done" in capsys.readouterr().err
        assert (list(root.handlers), root.level) == before
    finally:
        for name, (handlers, level) in packages.items():
            logging.getLogger(name).handlers[:] = handlers
            logging.getLogger(name).setLevel(level)
    with pytest.raises(ValueError, match="either orthanc"):
        configure_node_logging()
    with pytest.raises(ValueError, match="either orthanc"):
        configure_node_logging(orthanc=FakeOrthanc(), worker="w1")
