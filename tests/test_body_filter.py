"""The request filter that refuses a body over its route's cap from the headers (before Orthanc reads it)."""

from __future__ import annotations

import logging

import pytest

from orthanc_plugin.admin import MAX_REQUEST_BYTES
from orthanc_plugin.body_filter import BodyFilter, refusal
from orthanc_plugin.models import MAX_UPLOAD_BYTES
from orthanc_plugin.rest_leaks import RestReferenceLeak

GET, POST, PUT, DELETE = 1, 2, 3, 4


def test_bodies_over_the_cap_of_the_nodes_routes_are_refused() -> None:
    over = {"content-length": str(MAX_REQUEST_BYTES + 1)}
    assert "larger than the 1048576" in str(refusal(POST, "/lesion-ai/rules/test", over))
    assert refusal(PUT, "/lesion-ai/rules", over) is not None
    assert refusal(POST, "/lesion-ai/nosuchroute", over) is not None
    assert refusal(POST, "/lesion-ai/rules/test", {"content-length": str(MAX_REQUEST_BYTES)}) is None
    # A model upload has its own, larger cap.
    assert refusal(POST, "/lesion-ai/models/site-v2", over) is None
    assert (
        refusal(POST, "/lesion-ai/models/site-v2", {"content-length": str(MAX_UPLOAD_BYTES + 1)}) is not None
    )
    assert refusal(POST, "/lesion-ai/models/site-v2/shadow", over) is not None
    # No announced length (chunked) is refused; a length that is not a number too.
    assert "chunked" in str(refusal(POST, "/lesion-ai/rules/test", {"transfer-encoding": "Chunked"}))
    assert "not a number" in str(refusal(PUT, "/lesion-ai/rules", {"content-length": "12abc"}))
    assert refusal(POST, "/lesion-ai/rules/test", {}) is None


def test_other_routes_and_methods_are_left_alone() -> None:
    over = {"content-length": str(10 * MAX_UPLOAD_BYTES), "transfer-encoding": "chunked"}
    for method, uri in (
        (POST, "/instances"),
        (POST, "/dicom-web/studies"),
        (POST, "/lesion-ai"),  # not under the node's prefix
        (GET, "/lesion-ai/health"),
        (DELETE, "/lesion-ai/models/x"),
    ):
        assert refusal(method, uri, over) is None, (method, uri)


def test_the_filter_answers_logs_and_never_raises(caplog: pytest.LogCaptureFixture) -> None:
    allowing = BodyFilter(RestReferenceLeak(lambda: b'{"Version": "7.1"}'))
    with caplog.at_level(logging.WARNING, "orthanc_plugin.body_filter"):
        assert not allowing("/lesion-ai/rules", method=PUT, headers={"content-length": "9" * 12})
    assert "/lesion-ai/rules refused before its body was read: a body of 999999999999 bytes" in caplog.text
    assert allowing("/lesion-ai/rules", method=PUT, headers={"content-length": "10"})
    # Odd arguments let the request through (the REST callback's own cap still applies).
    assert allowing("/lesion-ai/rules", method="PUT", headers=None)
    assert allowing("/lesion-ai/rules", headers={"content-length": "9" * 12})
