"""Release what orthanc-python before 4.1 leaks on every REST callback.

orthanc-python 4.0 (Debian 12's ``orthanc-python`` package) builds the keyword arguments of a REST callback
with ``PyDict_SetItemString(kw, key, value)`` on values it never releases (``Sources/RestCallbacks.cpp``:
``method``, ``groups``, ``get`` and ``headers`` with each of their values, and ``body``). Each object keeps
one reference too many and is never freed: a node leaks every request's body (200 refused 6 MB POSTs grew
Orthanc from 82 MB to 1.3 GB) and every request's headers (about 6 KB per request with 20 headers of 200
characters). A bare Orthanc with a five-line Python plugin shows the same; upstream fixed it in 4.1
(2023-08-30, "Fix memory leaks ...": the values are now wrapped in owning objects).

:class:`RestReferenceLeak` drops exactly that one extra reference of each object, once per request, when the
running plugin is a version that leaks (read from Orthanc's ``/plugins/python`` at the first request). Later
versions, unknown versions and the tests' fake ``orthanc`` module are left alone: releasing a reference the
plugin did not leak would free an object still in use. The objects stay alive until the callback returns:
Orthanc's keyword dictionary holds its own reference to each of them.
"""

from __future__ import annotations

import ctypes
import json
import logging
import re
import threading
from collections.abc import Callable, Mapping
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["FIXED_IN", "RestReferenceLeak", "leaks_references", "plugin_version"]

#: The first orthanc-python release whose REST callbacks release their arguments.
FIXED_IN = (4, 1)
_VERSION = re.compile(r"(\d+)\.(\d+)")
#: Keys of the request the plugin leaks (the values of the mappings among them leak too).
_LEAKED_KEYS = ("method", "groups", "get", "headers", "body")
_MAPPINGS = ("get", "headers")


def _decref_function() -> Callable[[object], None]:
    function = ctypes.pythonapi.Py_DecRef
    function.argtypes = [ctypes.py_object]
    function.restype = None
    return function


def plugin_version(answer: bytes | str) -> tuple[int, int] | None:
    """The (major, minor) version in Orthanc's ``/plugins/python`` answer, or None when it has none
    (a mainline build says ``mainline``)."""
    try:
        data = json.loads(answer)
    except (ValueError, UnicodeDecodeError):
        return None
    found = _VERSION.fullmatch(str(data.get("Version", ""))) if isinstance(data, dict) else None
    return (int(found.group(1)), int(found.group(2))) if found else None


def leaks_references(version: tuple[int, int] | None) -> bool:
    """Whether an orthanc-python of this version leaks its REST callbacks' arguments (unknown: no)."""
    return version is not None and version < FIXED_IN


class RestReferenceLeak:
    """Releases the references an old orthanc-python leaks on each REST callback (see the module docstring).

    Parameters
    ----------
    read_version : callable
        Returns Orthanc's ``/plugins/python`` answer (called once, at the first request: Orthanc refuses
        REST calls while plugins initialise). When it fails, nothing is released.
    """

    def __init__(self, read_version: Callable[[], bytes | str]) -> None:
        self._read_version = read_version
        self._lock = threading.Lock()
        self._active: bool | None = None
        self._decref: Callable[[object], None] | None = None

    @property
    def active(self) -> bool:
        """Whether this plugin leaks and requests are released (decided at the first call)."""
        with self._lock:
            if self._active is None:
                self._active = self._decide()
            return self._active

    def _decide(self) -> bool:
        try:
            version = plugin_version(self._read_version())
        except Exception as exc:
            logger.info("the Python plugin's version cannot be read (%s): its references are left alone", exc)
            return False
        if not leaks_references(version):
            return False
        self._decref = _decref_function()
        logger.warning(
            "orthanc-python %s leaks every REST request's arguments (fixed in %d.%d); the node releases them",
            ".".join(str(v) for v in version or ()),
            *FIXED_IN,
        )
        return True

    def release(self, request: Mapping[str, Any]) -> None:
        """Drop the leaked reference of each argument of one request; call once, when it is answered."""
        if not self.active or self._decref is None:
            return
        for key in _MAPPINGS:
            values = request.get(key)
            if isinstance(values, dict):
                for value in values.values():
                    self._decref(value)
        for key in _LEAKED_KEYS:
            if key in request:
                self._decref(request[key])
