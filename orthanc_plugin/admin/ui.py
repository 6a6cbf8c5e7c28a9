"""The admins' web page, served by the node at ``/lesion-ai/ui/`` behind Orthanc's authentication.

Plain static files shipped with the package (``orthanc_plugin/data/ui/``: ``index.html``, its style sheet
and its scripts; no build step): the page reads and changes the node through the admin REST API
(:mod:`orthanc_plugin.admin.routes`) on the same origin, with the same credentials, sending the CSRF header of
state-changing requests.

* Only the files of that folder are served, by plain name (``app.js``); ``""`` (the page's base URL, with
  or without its final slash: Orthanc drops it) and ``index.html`` are the page. Any other path (``..``,
  a slash, an escape, an unknown name) is refused without touching the file system.
* Every answer carries a strict ``Content-Security-Policy`` (scripts and styles from the node only, no
  inline script, no framing, no ``<base>``, no plugins), ``X-Content-Type-Options: nosniff``,
  ``Referrer-Policy: no-referrer`` and ``Cache-Control: no-cache``.
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass, field
from importlib.resources import files
from importlib.resources.abc import Traversable

from orthanc_plugin.node.orthanc_api import RestOutput, answer_file

logger = logging.getLogger(__name__)

__all__ = ["CONTENT_SECURITY_POLICY", "SECURITY_HEADERS", "UI_BASE", "UI_ROUTE", "UiAnswer", "UiFiles"]

#: Where the node serves the page.
UI_BASE = "/lesion-ai/ui/"
#: The page's route below ``/lesion-ai/``.
UI_ROUTE = "ui"
INDEX_FILE = "index.html"
#: Nothing but the node's own scripts, styles, images and API; no inline script or style attribute.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'"
)
#: Headers of every answer for the page's files.
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
}
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
}
#: A file name served: lower-case letters, digits, ``-``, ``_`` and one of the known suffixes.
_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}(\.html|\.js|\.css|\.svg|\.png|\.ico)")


@dataclass(frozen=True)
class UiAnswer:
    """What the node answers to one request for the page.

    Attributes
    ----------
    status : int
        200, 400, 404, 405 or 503.
    body : bytes
        The file, or a message saying what is wrong.
    mime : str
        Content type of ``body``.
    headers : dict of str to str
        Further headers (:data:`SECURITY_HEADERS`, ``Allow``).
    """

    status: int
    body: bytes
    mime: str = "text/plain; charset=utf-8"
    headers: dict[str, str] = field(default_factory=lambda: dict(SECURITY_HEADERS))


def _message(status: int, text: str) -> UiAnswer:
    return UiAnswer(status, (text + "\n").encode("utf-8"))


def _package_folder() -> Traversable:
    return files("orthanc_plugin").joinpath("data").joinpath("ui")


class UiFiles:
    """The page's files (read once, on first use) and the answers for them.

    Parameters
    ----------
    root : Traversable, optional
        The folder of the files (default: the package's ``data/ui``).
    """

    def __init__(self, root: Traversable | None = None) -> None:
        self.root = root if root is not None else _package_folder()
        self._files: dict[str, bytes] | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"UiFiles({self.root}, at {UI_BASE})"

    def files(self) -> dict[str, bytes]:
        """The files served, by name (only plain names with a known suffix; read at the first call)."""
        with self._lock:
            if self._files is None:
                found: dict[str, bytes] = {}
                if self.root.is_dir():
                    for item in self.root.iterdir():
                        if _NAME.fullmatch(item.name) and item.is_file():
                            found[item.name] = item.read_bytes()
                self._files = found
            return self._files

    def answer(self, method: str, path: str) -> UiAnswer:
        """Answer one request.

        Parameters
        ----------
        method : str
            The HTTP method (only GET is served).
        path : str
            The request's path below :data:`UI_BASE` (``""`` for the page itself), as received.

        Returns
        -------
        UiAnswer
            The file; 400 for a path that is not a plain file name, 404 for an unknown name, 405 for
            another method, 503 when the page's files are missing from the installation.
        """
        if method != "GET":
            return UiAnswer(405, b"", headers={**SECURITY_HEADERS, "Allow": "GET"})
        name = path.removeprefix("/")
        name = name.removesuffix("/") or INDEX_FILE
        if not _NAME.fullmatch(name):
            return _message(
                400, f"bad path {path[:100]!r}: only the page's files, by plain name, under {UI_BASE}"
            )
        found = self.files()
        if INDEX_FILE not in found:
            return _message(503, f"the admin page's files are missing from the installation ({self.root})")
        data = found.get(name)
        if data is None:
            return _message(404, f"no such file: {UI_BASE}{name}")
        suffix = name[name.rindex(".") :]
        return UiAnswer(200, data, _TYPES[suffix])

    def respond(self, output: RestOutput, method: str, rest: str) -> None:
        """Answer a request through Orthanc's REST output (``rest``: the path after ``/lesion-ai/ui``)."""
        try:
            result = self.answer(method, rest)
        except OSError as exc:
            logger.error("admin page: cannot read its files: %s", exc)
            result = _message(500, f"the admin page's files cannot be read: {exc}")
        answer_file(output, result.status, result.body, result.mime, result.headers)
