"""The OHIF Viewer, served by the node at ``/lesion-ai/viewer/`` behind Orthanc's authentication.

``make setup`` installs the built OHIF app (npm package ``@ohif/app``, version :data:`VIEWER_VERSION`,
its ``dist`` folder) into ``share/lesion-ai-viewer/VERSION`` of the virtual environment; nothing is
downloaded at run time. This module answers the viewer's requests from those files:

* ``app-config.js`` is generated: one DICOMweb data source with the node's own roots (``/dicom-web``,
  relative, so same origin and same credentials; searches through ``/lesion-ai/qido``,
  :mod:`orthanc_plugin.admin.qido`), the router's base name, and confirmation prompts off
  (the node's SR is read as tracked measurements without asking).
* OHIF is built for the server's root: its absolute ``/`` asset paths (``window.PUBLIC_URL`` and
  ``href``/``src`` in ``index.html``, ``url(/`` in style sheets, webpack's public path in the bundles
  and workers, icons of ``manifest.json``) are rewritten to :data:`BASE_URL` as the files are served.
* A path that names no file and no static asset (a route of OHIF's single-page app, such as
  ``viewer?StudyInstanceUIDs=...``) is answered with ``index.html``.
* Paths are checked component by component (no ``..``, no hidden files, no absolute or encoded escapes)
  and the file found must lie inside the viewer's folder once symbolic links are resolved.

A site that runs its own OHIF instead points it at the node's DICOMweb root (see the README).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from orthanc_plugin.admin.qido import QIDO_ROOT
from orthanc_plugin.node.settings import NodeSettings

logger = logging.getLogger(__name__)

__all__ = [
    "BASE_URL",
    "CONTENT_SECURITY_POLICY",
    "DICOMWEB_ROOT",
    "VIEWER_PACKAGE",
    "VIEWER_VERSION",
    "ViewerAnswer",
    "ViewerFiles",
    "app_config",
    "default_viewer_dir",
    "viewer_files",
]

#: The viewer's Content-Security-Policy: everything from the node only (the app, its workers, DICOMweb and
#: bulk data), nothing framed by another site (clickjacking), no plugins, no ``<base>`` elsewhere. OHIF needs
#: inline script (the page's configuration), eval and WebAssembly (its image codecs), blob: workers and
#: images, inline styles.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self' 'unsafe-inline' 'unsafe-eval' 'wasm-unsafe-eval' blob:; "
    "worker-src 'self' blob:; child-src 'self' blob:; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; font-src 'self' data:; connect-src 'self' data: blob:; "
    "media-src 'self' data: blob:; object-src 'none'; base-uri 'self'; form-action 'self'; "
    "frame-ancestors 'self'"
)
_SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "SAMEORIGIN",
    "X-Content-Type-Options": "nosniff",
}

#: The npm package installed by ``make setup`` (``scripts/setup.sh`` pins the same version).
VIEWER_PACKAGE = "@ohif/app"
VIEWER_VERSION = "3.13.2"
#: Where the node serves the viewer (under the plugin's ``/lesion-ai/`` routes).
BASE_URL = "/lesion-ai/viewer/"
#: The node's DICOMweb root (the DICOMweb plugin's ``Root`` without its final slash).
DICOMWEB_ROOT = "/dicom-web"
#: The generated configuration, in place of the package's own.
CONFIG_FILE = "app-config.js"
INDEX_FILE = "index.html"

_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".wasm": "application/wasm",
    ".json": "application/json",
    ".jsonc": "application/json",
    ".map": "application/json",
    ".webapp": "application/x-web-app-manifest+json",
    ".xml": "application/xml",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".gif": "image/gif",
    ".ico": "image/x-icon",
    ".woff2": "font/woff2",
    ".woff": "font/woff",
    ".ttf": "font/ttf",
    ".txt": "text/plain; charset=utf-8",
    ".onnx": "application/octet-stream",
}
#: One path component: starts with a letter, digit or underscore (no ``.``, ``..`` or hidden files).
_COMPONENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.@+~-]*")
#: Webpack's content hash in a file name: such a file never changes (cached for a year).
_HASHED = re.compile(r"(^|[.])[0-9a-f]{16}[.]")
#: A plausible Host header: a name or address and a port (anything else is not used).
_HOST = re.compile(r"[A-Za-z0-9.-]{1,253}(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]{2,45}\](:[0-9]{1,5})?")
_IMMUTABLE = "private, max-age=31536000, immutable"
_REVALIDATE = "no-cache"


def default_viewer_dir(prefix: Path) -> Path:
    """Where ``make setup`` installs the viewer under an installation prefix (the virtual environment).

    Parameters
    ----------
    prefix : Path
        The prefix, e.g. ``.venv`` (``sys.prefix`` of the virtual environment).

    Returns
    -------
    Path
        ``prefix/share/lesion-ai-viewer/VIEWER_VERSION``.
    """
    return prefix / "share" / "lesion-ai-viewer" / VIEWER_VERSION


def app_config(
    base_url: str = BASE_URL,
    dicomweb_root: str = DICOMWEB_ROOT,
    host: str | None = None,
    qido_root: str | None = None,
) -> str:
    """OHIF's ``app-config.js`` for a viewer served at ``base_url`` reading the DICOMweb at ``dicomweb_root``.

    Parameters
    ----------
    base_url : str
        Where the viewer is served (ends with ``/``).
    dicomweb_root : str
        WADO-RS and WADO-URI root (and QIDO-RS root unless ``qido_root`` is given), relative to the page's
        origin or absolute.
    host : str, optional
        The ``Host`` header of the request. Orthanc's DICOMweb plugin writes absolute BulkDataURIs from
        that header (``http://HOST/dicom-web/...``, unless a ``Forwarded`` header or its ``Host``/``Ssl``
        options say otherwise); OHIF is told to read those as relative to the page's origin, so that bulk
        data comes through the same origin (and credentials) behind a reverse proxy that changes the host.
    qido_root : str, optional
        QIDO-RS root when it differs (the node's :data:`orthanc_plugin.admin.qido.QIDO_ROOT`, which splits OHIF's
        comma-separated ``includefield`` for Orthanc's DICOMweb plugin).

    Returns
    -------
    str
        JavaScript that sets ``window.config``.
    """
    bulk: dict[str, Any] = {"enabled": True}
    if host is not None and _HOST.fullmatch(host) and dicomweb_root.startswith("/"):
        bulk.update(startsWith=f"http://{host}{dicomweb_root}/", prefixWith=f"{dicomweb_root}/")
    config: dict[str, Any] = {
        "name": "lesion-ai",
        "routerBasename": base_url.rstrip("/"),
        "extensions": [],
        "modes": [],
        "customizationService": {},
        "showStudyList": True,
        "maxNumberOfWebWorkers": 3,
        "showWarningMessageForCrossOrigin": False,
        "showCPUFallbackMessage": True,
        "showLoadingIndicator": True,
        "strictZSpacingForVolumeViewport": True,
        "groupEnabledModesFirst": True,
        # The node's SR holds tracked measurements: hydrate them without asking.
        "disableConfirmationPrompts": True,
        "maxNumRequests": {"interaction": 100, "thumbnail": 5, "prefetch": 25},
        "showErrorDetails": "always",
        "defaultDataSourceName": "dicomweb",
        "dataSources": [
            {
                "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
                "sourceName": "dicomweb",
                "configuration": {
                    "friendlyName": "Lesion AI node",
                    "name": "lesion-ai",
                    "qidoRoot": qido_root or dicomweb_root,
                    "wadoRoot": dicomweb_root,
                    "wadoUriRoot": dicomweb_root,
                    "qidoSupportsIncludeField": False,
                    "imageRendering": "wadors",
                    "thumbnailRendering": "wadors",
                    # The lazy loader's series search sends a comma-separated includefield to the WADO
                    # root, which Orthanc's DICOMweb plugin cannot read (orthanc_plugin.admin.qido).
                    "enableStudyLazyLoad": False,
                    "supportsFuzzyMatching": False,
                    "supportsWildcard": True,
                    "omitQuotationForMultipartRequest": True,
                    "bulkDataURI": bulk,
                },
            }
        ],
    }
    return (
        "/** OHIF's configuration, generated by the lesion AI node: this node's DICOMweb. */\n"
        f"window.config = {json.dumps(config, indent=2)};\n"
    )


@dataclass(frozen=True)
class ViewerAnswer:
    """What the node answers to one request for the viewer.

    Attributes
    ----------
    status : int
        HTTP status: 200, 400, 404, 405 or 503.
    body : bytes
        The file, or a message saying what is wrong and how to fix it.
    mime : str
        Content type of ``body``.
    headers : dict of str to str
        Further response headers (caching, ``X-Content-Type-Options``, ``Allow``).
    """

    status: int
    body: bytes
    mime: str = "text/plain; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)


def _message(status: int, text: str) -> ViewerAnswer:
    return ViewerAnswer(status, (text + "\n").encode("utf-8"))


class ViewerFiles:
    """Answers requests for the viewer from an installed OHIF ``dist`` folder.

    Parameters
    ----------
    root : Path or None
        The folder holding OHIF's ``index.html``; None when unknown (requests are answered 503).
    enabled : bool
        False: every request is answered 404 with how to turn the viewer on.
    base_url : str
        Where the viewer is served; must start and end with ``/``.
    dicomweb_root : str
        The DICOMweb root the generated configuration points at.

    Raises
    ------
    ValueError
        ``base_url`` does not start and end with ``/``.
    """

    def __init__(
        self,
        root: Path | None,
        *,
        enabled: bool = True,
        base_url: str = BASE_URL,
        dicomweb_root: str = DICOMWEB_ROOT,
    ) -> None:
        if not (base_url.startswith("/") and base_url.endswith("/")):
            raise ValueError(f"the viewer's base URL must start and end with '/', got {base_url!r}")
        self.root = root
        self.enabled = enabled
        self.base_url = base_url
        self.dicomweb_root = dicomweb_root

    def __repr__(self) -> str:
        state = "enabled" if self.enabled else "disabled"
        return f"ViewerFiles({self.root}, {state}, at {self.base_url})"

    def installed(self) -> bool:
        """True when the viewer's files are there (its ``index.html``)."""
        return self.root is not None and (self.root / INDEX_FILE).is_file()

    def answer(self, method: str, path: str, host: str | None = None) -> ViewerAnswer:
        """Answer one request.

        Parameters
        ----------
        method : str
            The HTTP method (only GET is served).
        path : str
            The request's path below the viewer's base URL (``""`` for the base itself; percent-encoded
            or not).
        host : str, optional
            The request's ``Host`` header (see :func:`app_config`).

        Returns
        -------
        ViewerAnswer
            The file (rewritten for the base URL where needed), ``index.html`` for a route of the app, or
            a message: 400 for a path that tries to leave the viewer's folder, 404 for an unknown asset
            or a viewer turned off, 503 when the viewer is not installed.
        """
        if not self.enabled:
            return _message(
                404,
                "The OHIF viewer is turned off on this node (LesionAI setting Viewer: false, which "
                "LESION_AI_VIEWER=0 sets). Turn it on with Viewer: true in the LesionAI section "
                "(lesion-ai node: unset LESION_AI_VIEWER or set it to 1) and restart the node.",
            )
        if method != "GET":
            return ViewerAnswer(405, b"", headers={"Allow": "GET"})
        root = self.root
        if root is None or not (root / INDEX_FILE).is_file():
            where = str(root) if root is not None else "(no folder configured)"
            return _message(
                503,
                f"The OHIF viewer is not installed at {where}: run `make setup` (it installs "
                f"{VIEWER_PACKAGE} {VIEWER_VERSION} there), or set ViewerDir in the LesionAI section to "
                "the folder of an OHIF build (its index.html).",
            )
        parts = _components(path)
        if parts is None:
            return _message(400, f"bad viewer path {path!r}: only plain names below {self.base_url}")
        if parts == [CONFIG_FILE]:
            qido = QIDO_ROOT if self.dicomweb_root == DICOMWEB_ROOT else None
            config = app_config(self.base_url, self.dicomweb_root, host, qido).encode("utf-8")
            return ViewerAnswer(200, config, _TYPES[".js"], {"Cache-Control": _REVALIDATE})
        root = root.resolve()
        target = root.joinpath(*parts).resolve() if parts else root
        if not target.is_relative_to(root):
            return _message(400, f"bad viewer path {path!r}: it leaves the viewer's folder")
        if target.is_file():
            return self._file(target)
        if parts and Path(parts[-1]).suffix.lower() in _TYPES:
            return _message(404, f"no such viewer file: {self.base_url}{'/'.join(parts)}")
        return self._file(root / INDEX_FILE)  # a route of the single-page app

    def _file(self, path: Path) -> ViewerAnswer:
        data = _rewrite(path.name, path.read_bytes(), self.base_url.encode("ascii"))
        mime = _TYPES.get(path.suffix.lower(), "application/octet-stream")
        cache = _IMMUTABLE if _HASHED.search(path.name) else _REVALIDATE
        return ViewerAnswer(200, data, mime, {"Cache-Control": cache, **_SECURITY_HEADERS})


def _components(path: str) -> list[str] | None:
    """The path's components, or None when one of them is not a plain name (``..``, ``.``, empty inside,
    hidden, a back-slash, an absolute path, or still encoded after one decoding)."""
    decoded = unquote(path)
    if decoded.startswith("/"):
        return None
    if decoded.endswith("/"):
        decoded = decoded[:-1]
    if not decoded:
        return []
    parts = decoded.split("/")
    if not all(_COMPONENT.fullmatch(part) for part in parts):
        return None
    return parts


def _rewrite(name: str, data: bytes, base: bytes) -> bytes:
    """OHIF's build for the server's root, rewritten for the base URL ``base`` (``/.../``)."""
    if name == INDEX_FILE:
        data = data.replace(b'window.PUBLIC_URL="/"', b'window.PUBLIC_URL="' + base + b'"')
        return re.sub(rb'\b(href|src)="/(?!/)', lambda m: m.group(1) + b'="' + base, data)
    if name == "manifest.json":
        return re.sub(rb'"src": "/(?!/)', lambda m: b'"src": "' + base, data)
    if name.endswith(".css"):
        return re.sub(rb"url\(/(?!/)", lambda m: b"url(" + base, data)
    if name.endswith(".js"):
        return data.replace(b'__webpack_require__.p = "/";', b'__webpack_require__.p = "' + base + b'";')
    return data


def viewer_files(settings: NodeSettings) -> ViewerFiles:
    """The viewer as the node's settings configure it (``Viewer``, ``ViewerDir``).

    Without ``ViewerDir``, the files are where ``make setup`` installs them for the virtual environment
    whose interpreter runs the workers (``Python``): ``share/lesion-ai-viewer/VERSION`` under its prefix.
    """
    root = settings.viewer_dir
    if root is None:
        python = Path(settings.python)
        root = default_viewer_dir(python.parent.parent) if python.is_absolute() else None
    return ViewerFiles(root, enabled=settings.viewer)
