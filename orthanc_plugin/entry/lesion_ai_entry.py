"""Entry script of the lesion AI node, loaded by Orthanc's Python plugin.

Orthanc's configuration names this file twice, for every version of the plugin: ``"PythonScript"``
(orthanc-python 4.0, Orthanc 1.10) and ``"Python": {"Path": ...}`` (later plugins). Orthanc's embedded
interpreter is the system Python: this script first puts the virtual environment's site-packages (named
in the ``LesionAI`` section, ``SitePackages``) on ``sys.path`` ahead of the system's packages, but behind the
standard library (a package may ship a backport module named like a standard one: picai_prep pulls in the
2018 ``dataclasses`` backport, which would break every import of dataclasses), then installs the plugin.

This file is part of the lesion AI node, AGPL-3.0-or-later; ``GET /lesion-ai/source`` serves its source.
"""

from __future__ import annotations

import glob
import json
import os
import site
import sys
import sysconfig

import orthanc

# The node's configuration section and its keys, as orthanc_plugin.node.settings names them: this script runs
# before the package can be imported (it puts it on sys.path), so they are written here too; a test checks
# that they agree.
SECTION = "LesionAI"
SITE_PACKAGES_KEY = "SitePackages"
PYTHON_KEY = "Python"


def _site_packages() -> str | None:
    section = json.loads(orthanc.GetConfiguration()).get(SECTION) or {}
    configured = section.get(SITE_PACKAGES_KEY)
    if configured:
        return str(configured)
    python = section.get(PYTHON_KEY)
    if python:
        prefix = os.path.dirname(os.path.dirname(str(python)))
        found = sorted(glob.glob(os.path.join(prefix, "lib", "python3*", "site-packages")))
        if found:
            return found[-1]
    return None


def _prepend_site_packages() -> None:
    path = _site_packages()
    if path is None:
        orthanc.LogWarning("lesion-ai: no SitePackages configured; using the system's Python packages")
        return
    before = list(sys.path)
    site.addsitedir(path)
    added = [p for p in sys.path if p not in before]
    sys.path[:] = ordered_path(before, added, _standard_library())


def _standard_library() -> set[str]:
    stdlib = sysconfig.get_path("stdlib")
    return {
        os.path.normpath(p)
        for p in (stdlib, sysconfig.get_path("platstdlib"), os.path.join(stdlib, "lib-dynload"))
        if p
    }


def ordered_path(before: list[str], added: list[str], standard_library: set[str]) -> list[str]:
    """``sys.path`` with ``added`` (the virtual environment) ahead of the system's packages and behind the
    standard library (its folders and zip): a backport in site-packages never shadows a standard module."""
    stdlib = [p for p in before if os.path.normpath(p) in standard_library or p.endswith(".zip")]
    rest = [p for p in before if p not in stdlib]
    return stdlib + added + rest


_prepend_site_packages()

from orthanc_plugin.launch import PRIVATE_UMASK  # noqa: E402 - needs the site-packages above
from orthanc_plugin.plugin import install  # noqa: E402

# Patient data at rest: everything Orthanc and the node write from now on (storage, index, queue, logs) is
# readable by Orthanc's user only (0600 files, 0700 folders), also where a site configures Orthanc itself.
os.umask(PRIVATE_UMASK)

PLUGIN = install(orthanc)
