"""A typed view of Orthanc's embedded ``orthanc`` module, and REST access over it.

The ``orthanc`` module exists only inside Orthanc's Python plugin and ships no type information. The
plugin's code receives it as an :class:`OrthancModule` (a structural type listing what the node uses), so
that it is type-checked, and so that tests can pass a fake module. Only the entry script imports
``orthanc`` itself.

Works with orthanc-python 4.0 (Orthanc 1.10) and later plugins.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from typing import Any, Protocol
from urllib.parse import quote

logger = logging.getLogger(__name__)

__all__ = [
    "InProcessApi",
    "NotFoundError",
    "OrthancLogHandler",
    "OrthancModule",
    "RestApi",
    "RestApiError",
    "RestOutput",
    "answer",
    "answer_file",
    "quote_id",
]

#: Orthanc's error code for an unknown resource (OrthancException args[0]).
UNKNOWN_RESOURCE = 17


class RestApiError(Exception):
    """A call to Orthanc's REST API failed.

    Attributes
    ----------
    status : int or None
        HTTP status (over HTTP) or None (in process).
    """

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class NotFoundError(RestApiError):
    """The resource does not exist (HTTP 404, Orthanc error 17)."""


class RestOutput(Protocol):
    """The ``output`` object given to a REST callback."""

    def AnswerBuffer(self, buffer: bytes | str, mime_type: str) -> None:  # noqa: N802 - Orthanc's names
        """Answer 200 with a body."""
        ...

    def SendHttpStatus(self, *args: Any) -> None:  # noqa: N802
        """Answer with a status code and a body."""
        ...

    def SendHttpStatusCode(self, status: int) -> None:  # noqa: N802
        """Answer with a status code and no body."""
        ...

    def SendMethodNotAllowed(self, allowed: str) -> None:  # noqa: N802
        """Answer 405."""
        ...

    def SetHttpHeader(self, key: str, value: str) -> None:  # noqa: N802
        """Add a header to the answer (before the answer is sent)."""
        ...


class OrthancModule(Protocol):
    """What the node uses of the embedded ``orthanc`` module."""

    ChangeType: Any
    ResourceType: Any

    @property
    def OrthancException(self) -> type[Exception]:  # noqa: N802
        """The exception class of failed calls (``args``: Orthanc's error code and description)."""
        ...

    def RestApiGet(self, uri: str) -> bytes:  # noqa: N802
        """GET on Orthanc's REST API (built-in routes)."""
        ...

    def RestApiGetAfterPlugins(self, uri: str) -> bytes:  # noqa: N802
        """GET on Orthanc's REST API including plugins' routes."""
        ...

    def RestApiPost(self, uri: str, body: bytes | str) -> bytes:  # noqa: N802
        """POST on Orthanc's REST API."""
        ...

    def RestApiPut(self, uri: str, body: bytes | str) -> bytes:  # noqa: N802
        """PUT on Orthanc's REST API."""
        ...

    def GetConfiguration(self) -> str:  # noqa: N802
        """Orthanc's configuration, as JSON text."""
        ...

    def GetGlobalProperty(self, key: int, default: str) -> str:  # noqa: N802
        """A global property (key >= 1024 for plugins), or ``default``."""
        ...

    def SetGlobalProperty(self, key: int, value: str) -> None:  # noqa: N802
        """Store a global property (key >= 1024 for plugins)."""
        ...

    def RegisterOnChangeCallback(self, callback: Callable[[int, int, str], None]) -> None:  # noqa: N802
        """Register the change callback (called on one thread, in order)."""
        ...

    def RegisterRestCallback(self, uri: str, callback: Callable[..., None]) -> None:  # noqa: N802
        """Register a REST route (a regular expression)."""
        ...

    def LogInfo(self, message: str) -> None:  # noqa: N802
        """Log at INFO (shown with Orthanc's --verbose)."""
        ...

    def LogWarning(self, message: str) -> None:  # noqa: N802
        """Log at WARNING."""
        ...

    def LogError(self, message: str) -> None:  # noqa: N802
        """Log at ERROR."""
        ...


class RestApi(Protocol):
    """JSON access to Orthanc's REST API, in process or over HTTP."""

    def get_json(self, uri: str) -> Any:
        """GET, decoded as JSON."""
        ...

    def get_bytes(self, uri: str) -> bytes:
        """GET, raw body."""
        ...


def quote_id(value: str) -> str:
    """Quote an identifier for use in a URI path segment."""
    return quote(value, safe="")


class InProcessApi:
    """:class:`RestApi` over ``orthanc.RestApiGet`` (inside Orthanc).

    Parameters
    ----------
    orthanc : OrthancModule
        The embedded module.
    """

    def __init__(self, orthanc: OrthancModule) -> None:
        self.orthanc = orthanc

    def _call(self, what: str, uri: str, call: Callable[[], bytes]) -> bytes:
        try:
            return call()
        except self.orthanc.OrthancException as exc:
            code = exc.args[0] if exc.args else None
            if code == UNKNOWN_RESOURCE:
                raise NotFoundError(f"{what} {uri}: unknown resource", 404) from exc
            raise RestApiError(f"{what} {uri}: {exc}") from exc

    def get_bytes(self, uri: str, *, plugins: bool = False) -> bytes:
        """GET ``uri``; with ``plugins``, routes registered by plugins (e.g. DICOMweb) are reachable too."""
        call = self.orthanc.RestApiGetAfterPlugins if plugins else self.orthanc.RestApiGet
        return self._call("GET", uri, lambda: call(uri))

    def get_json(self, uri: str, *, plugins: bool = False) -> Any:
        """GET ``uri`` as JSON."""
        return json.loads(self.get_bytes(uri, plugins=plugins))

    def post_json(self, uri: str, body: Any) -> Any:
        """POST a JSON body; the answer decoded as JSON."""
        data = json.dumps(body)
        raw = self._call("POST", uri, lambda: self.orthanc.RestApiPost(uri, data))
        return json.loads(raw) if raw.strip() else None


class OrthancLogHandler(logging.Handler):
    """Routes Python logging into Orthanc's log (``LogInfo``/``LogWarning``/``LogError``)."""

    def __init__(self, orthanc: OrthancModule, level: int = logging.INFO) -> None:
        super().__init__(level)
        self.orthanc = orthanc
        self.setFormatter(logging.Formatter("lesion-ai %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        """Send one record to Orthanc's log."""
        try:
            message = self.format(record)
            if record.levelno >= logging.ERROR:
                self.orthanc.LogError(message)
            elif record.levelno >= logging.WARNING:
                self.orthanc.LogWarning(message)
            else:
                self.orthanc.LogInfo(message)
        except Exception:  # never let logging break a callback
            self.handleError(record)


def answer(output: RestOutput, status: int, body: Any, mime_type: str = "application/json") -> None:
    """Answer a REST callback with a status and a body (JSON-encoded unless bytes or text).

    Plugin 4.0 takes ``SendHttpStatus(status, body, size)``; later plugins may take
    ``SendHttpStatus(status, body)``. Both are tried.
    """
    if isinstance(body, bytes):
        data = body
    elif isinstance(body, str):
        data = body.encode("utf-8")
    else:
        data = (json.dumps(body, indent=2, sort_keys=False) + "\n").encode("ascii")
    if status == 200:
        output.AnswerBuffer(data, mime_type)
        return
    if not data:
        output.SendHttpStatusCode(status)
        return
    text = data.decode("utf-8", errors="replace")
    try:
        output.SendHttpStatus(status, text, len(data))
    except TypeError:
        output.SendHttpStatus(status, data)


def answer_file(
    output: RestOutput, status: int, body: bytes, mime_type: str, headers: Mapping[str, str]
) -> None:
    """Answer a request for a served file (the viewer's, the admin page's): ``headers`` set first; a 405
    answered as Orthanc does, with the ``Allow`` header (``GET`` when none is given)."""
    if status == 405:
        output.SendMethodNotAllowed(headers.get("Allow", "GET"))
        return
    for key, value in headers.items():
        output.SetHttpHeader(key, value)
    answer(output, status, body, mime_type)
