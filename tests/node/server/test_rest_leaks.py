"""The release of orthanc-python 4.0's leaked REST arguments: which versions, and exactly one reference each."""

from __future__ import annotations

import ctypes
import sys
from typing import Any

from orthanc_plugin.node.rest_leaks import RestReferenceLeak, leaks_references, plugin_version

_incref = ctypes.pythonapi.Py_IncRef
_incref.argtypes = [ctypes.py_object]
_incref.restype = None


def test_versions_that_leak() -> None:
    assert plugin_version(b'{"ID": "python", "Version": "4.0"}') == (4, 0)
    assert plugin_version('{"Version": "3.4"}') == (3, 4)
    assert plugin_version('{"Version": "mainline"}') is None
    assert plugin_version(b"not json") is None
    assert plugin_version(b"[1]") is None
    assert leaks_references((4, 0)) and leaks_references((3, 4))
    assert not leaks_references((4, 1)) and not leaks_references((7, 1)) and not leaks_references(None)


def _leaked_request(method: str) -> dict[str, Any]:
    """A request as orthanc-python 4.0 gives it: each object holding one reference nobody owns."""
    request: dict[str, Any] = {
        "method": "".join([method]),
        "groups": tuple(["health-" + "x"]),
        "headers": {"host": "node" + ":8142", "x-long": "v" * 200},
    }
    if method == "GET":
        request["get"] = {"since": "1" + "0"}
    else:
        request["body"] = bytes(bytearray(b"z" * 1000))
    for mapping in ("headers", "get"):
        for value in request.get(mapping, {}).values():
            _incref(value)
    for value in request.values():
        _incref(value)
    return request


def _counts(request: dict[str, Any]) -> list[int]:
    objects = list(request.values())
    for mapping in ("headers", "get"):
        objects += list(request.get(mapping, {}).values())
    return [sys.getrefcount(o) for o in objects]


def test_a_leaking_plugins_request_loses_exactly_one_reference_per_object() -> None:
    for method in ("GET", "POST"):
        request = _leaked_request(method)
        before = _counts(request)
        RestReferenceLeak(lambda: b'{"Version": "4.0"}').release(request)
        assert _counts(request) == [count - 1 for count in before], method


def test_other_versions_and_unreadable_versions_are_left_alone() -> None:
    def broken() -> bytes:
        raise RuntimeError("no REST API yet")

    for reader in (lambda: b'{"Version": "4.1"}', lambda: b'{"Version": "mainline"}', broken):
        request = _leaked_request("POST")
        before = _counts(request)
        leak = RestReferenceLeak(reader)
        leak.release(request)
        assert not leak.active
        assert _counts(request) == before
