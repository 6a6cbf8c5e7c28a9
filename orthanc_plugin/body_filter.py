"""Request bodies over a route's cap refused from their headers, before Orthanc reads them.

Orthanc 1.10 reads a POST or PUT body whole, into memory, before any plugin's REST callback runs, and it has
no per-route body limit of its own. It does, however, call an incoming-HTTP-request filter with the request's
method, URI and headers after authentication and *before* it reads the body (``HttpServer.cpp``: the filter,
then "Extract the body of the request for PUT and POST"). :class:`BodyFilter` is that filter: a POST or PUT
to one of the node's routes whose ``Content-Length`` is over the route's cap
(:func:`orthanc_plugin.admin.body_limit`: a model upload's 1 GiB, 1 MiB for the rest), or that announces no
length (``Transfer-Encoding: chunked``), is refused there. Orthanc answers 403 (a filter can only allow or
forbid) and never reads the body. Every other request, Orthanc's own routes and DICOMweb included, is allowed
untouched: their bodies are Orthanc's business, and they never reach Python.

The plugin's REST callback keeps its own 413 for a body that is over the cap once read (a client that
announced less than it sent is cut by Orthanc at the announced length).

orthanc-python before 4.1 leaks the filter's arguments as it leaks a REST callback's
(:mod:`orthanc_plugin.rest_leaks`): they are released here, once per call.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from orthanc_plugin.admin import body_limit
from orthanc_plugin.rest_leaks import FILTER_KEYS, RestReferenceLeak

logger = logging.getLogger(__name__)

__all__ = ["BodyFilter", "refusal"]

#: The node's routes, as Orthanc gives the filter its URI (decoded, with a leading slash).
PREFIX = "/lesion-ai/"
#: ``OrthancPluginHttpMethod`` values of the methods that carry a body.
_METHODS = {2: "POST", 3: "PUT"}


def refusal(method: int, uri: str, headers: Mapping[str, Any]) -> str | None:
    """Why a request must be refused before its body is read, or None to let it through.

    Parameters
    ----------
    method : int
        Orthanc's ``HttpMethod`` value (1 GET, 2 POST, 3 PUT, 4 DELETE).
    uri : str
        The request's path, as Orthanc decoded it.
    headers : mapping
        The request's headers, their names in lower case (as Orthanc gives them).
    """
    name = _METHODS.get(method)
    if name is None or not uri.startswith(PREFIX):
        return None
    path = uri[len(PREFIX) :]
    limit = body_limit(name, path)
    length = headers.get("content-length")
    if length is None:
        if "chunked" in str(headers.get("transfer-encoding", "")).lower():
            return f"a body of unannounced length (chunked); this route takes at most {limit} bytes with a Content-Length"
        return None
    try:
        size = int(str(length).strip())
    except ValueError:
        return f"a Content-Length that is not a number ({str(length)[:40]!r})"
    if size > limit:
        return f"a body of {size} bytes, larger than the {limit} this route accepts"
    return None


class BodyFilter:
    """Orthanc's incoming-HTTP-request filter for the node (see the module docstring).

    Parameters
    ----------
    leak : RestReferenceLeak
        Releases what an old orthanc-python leaks on each call (shared with the REST callback: one version
        check).
    """

    def __init__(self, leak: RestReferenceLeak) -> None:
        self.leak = leak

    def __call__(self, uri: str, **request: Any) -> bool:
        """Allow (True) or forbid (False) one request; never raises (a failure lets the request through,
        where the REST callback's own cap still applies)."""
        try:
            reason = refusal(int(request.get("method", 0)), str(uri), request.get("headers") or {})
        except Exception:
            logger.exception("the request filter failed on %s; the request goes through", str(uri)[:120])
            reason = None
        finally:
            self._release(request)
        if reason is None:
            return True
        logger.warning("%s refused before its body was read: %s", str(uri)[:120], reason)
        return False

    def _release(self, request: Mapping[str, Any]) -> None:
        try:
            self.leak.release(request, FILTER_KEYS)
        except Exception:
            logger.exception("the request filter's arguments could not be released")
