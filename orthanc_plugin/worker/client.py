"""A small client of Orthanc's REST API over HTTP, for workers, tools and tests (standard library only).

One keep-alive connection per thread; errors are split into "Orthanc is unreachable or overloaded"
(:class:`OrthancUnavailableError`, worth retrying) and the rest.
"""

from __future__ import annotations

import base64
import http.client
import json
import logging
import threading
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from orthanc_plugin.node.orthanc_api import NotFoundError, RestApiError

logger = logging.getLogger(__name__)

__all__ = ["OrthancClient", "OrthancUnavailableError"]


class OrthancUnavailableError(RestApiError):
    """Orthanc cannot be reached, or answered with a server error (transient)."""


class OrthancClient:
    """HTTP client of one Orthanc server.

    Parameters
    ----------
    url : str
        Base URL, e.g. ``http://127.0.0.1:8142``.
    username, password : str, optional
        HTTP Basic credentials (Orthanc's ``RegisteredUsers``).
    timeout_s : float
        Socket timeout of each request.
    headers : mapping, optional
        Headers sent with every request (e.g. the admin API's CSRF header).
    """

    def __init__(
        self,
        url: str,
        username: str | None = None,
        password: str | None = None,
        timeout_s: float = 120.0,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        parts = urlsplit(url.rstrip("/"))
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self.url = url.rstrip("/")
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port or (443 if self._https else 80)
        self._prefix = parts.path
        self.timeout_s = timeout_s
        self._headers: dict[str, str] = dict(headers or {})
        if username is not None:
            token = base64.b64encode(f"{username}:{password or ''}".encode()).decode("ascii")
            self._headers["Authorization"] = f"Basic {token}"
        self._local = threading.local()

    def _connection(self) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        if conn is None:
            cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            conn = cls(self._host, self._port, timeout=self.timeout_s)
            self._local.conn = conn
        return conn

    def _drop(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
        self._local.conn = None

    def request(
        self, method: str, path: str, body: bytes | None = None, content_type: str | None = None
    ) -> bytes:
        """Send one request; returns the body of a 2xx answer (see :meth:`exchange`)."""
        return self.exchange(method, path, body, content_type)[0]

    def exchange(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        content_type: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[bytes, dict[str, str]]:
        """Send one request with extra ``headers``; returns the body and the headers (lower-case names) of
        a 2xx answer.

        Raises
        ------
        NotFoundError
            404.
        OrthancUnavailableError
            Connection failure, timeout, or a 5xx answer.
        RestApiError
            Any other non-2xx answer (the message holds Orthanc's error details).
        """
        sent = {**self._headers, **(headers or {})}
        if content_type is not None:
            sent["Content-Type"] = content_type
        for attempt in (1, 2):
            conn = self._connection()
            try:
                conn.request(method, self._prefix + path, body=body, headers=sent)
                response = conn.getresponse()
                data = response.read()
            except (TimeoutError, http.client.HTTPException, ConnectionError, OSError) as exc:
                self._drop()
                # A kept-alive connection closed by the server fails once; a new one tells the truth.
                if attempt == 1 and isinstance(
                    exc, http.client.RemoteDisconnected | ConnectionResetError | BrokenPipeError
                ):
                    continue
                raise OrthancUnavailableError(
                    f"{method} {path}: Orthanc unreachable at {self.url}: {exc}"
                ) from exc
            if response.getheader("Connection", "").lower() == "close":
                self._drop()
            if 200 <= response.status < 300:
                return data, {k.lower(): v for k, v in response.getheaders()}
            message = f"{method} {path}: HTTP {response.status}: {_details(data)}"
            if response.status == 404:
                raise NotFoundError(message, 404)
            if response.status >= 500:
                raise OrthancUnavailableError(message, response.status)
            raise RestApiError(message, response.status)
        raise AssertionError("unreachable")  # pragma: no cover

    def get_bytes(self, path: str) -> bytes:
        """GET, raw body."""
        return self.request("GET", path)

    def get_json(self, path: str) -> Any:
        """GET, decoded as JSON."""
        return json.loads(self.request("GET", path))

    def post_json(self, path: str, body: Any) -> Any:
        """POST a JSON body; the answer decoded as JSON (None when empty)."""
        data = self.request("POST", path, json.dumps(body).encode("utf-8"), "application/json")
        return json.loads(data) if data.strip() else None

    def post_bytes(self, path: str, body: bytes, content_type: str = "application/dicom") -> Any:
        """POST raw bytes; the answer decoded as JSON (None when empty)."""
        data = self.request("POST", path, body, content_type)
        return json.loads(data) if data.strip() else None

    def get_versioned(self, path: str) -> tuple[bytes, str | None]:
        """GET a metadata value or attachment with its ``ETag`` (its revision and content digest, to give
        back as ``if_match`` when replacing it)."""
        data, headers = self.exchange("GET", path)
        return data, headers.get("etag")

    def put_text(self, path: str, text: str, if_match: str | None = None) -> bytes:
        """PUT a text body; with ``if_match`` (an ``ETag`` from :meth:`get_versioned`), only if the value
        is still that one (else Orthanc answers 409 Conflict: a :class:`RestApiError` of status 409)."""
        headers = {"If-Match": if_match} if if_match is not None else None
        return self.exchange("PUT", path, text.encode("utf-8"), "text/plain", headers)[0]

    def delete(self, path: str) -> bytes:
        """DELETE."""
        return self.request("DELETE", path)

    def close(self) -> None:
        """Close this thread's connection."""
        self._drop()


def _details(data: bytes) -> str:
    try:
        body = json.loads(data)
    except ValueError:
        return data.decode("utf-8", errors="replace")[:300]
    if isinstance(body, dict):
        parts = [str(body.get(k)) for k in ("Message", "Details", "error") if body.get(k)]
        if parts:
            return "; ".join(parts)
    return json.dumps(body)[:300]
