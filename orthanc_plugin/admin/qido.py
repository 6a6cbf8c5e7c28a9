"""QIDO-RS for the node's OHIF: the viewer's searches passed to Orthanc's DICOMweb plugin, ``includefield`` split.

OHIF 3 asks for the study list's extra fields as one comma-separated value
(``includefield=00081030,00080060``), which PS3.18 allows ("a comma-separated list of attributes"), and its
``qidoSupportsIncludeField`` setting no longer turns that off. Orthanc's DICOMweb plugin reads the value as
one tag: it logs ``Unknown DICOM tag`` and leaves the study description out, so OHIF's study list shows
"No Description". The viewer's QIDO root is therefore the node's ``/lesion-ai/qido``: each search is checked
here and passed to Orthanc's own ``/dicom-web`` route (inside Orthanc, after its authentication, with the
plugins' routes: ``RestApiGetAfterPlugins``), with every ``includefield`` value split into repeated
parameters. WADO-RS (metadata, frames, bulk data) goes to ``/dicom-web`` directly.

Only QIDO-RS's search resources are served (``studies``, ``series``, ``instances``, and the series and
instances of a study or series); anything else, an invalid UID, an ``includefield`` that names neither a tag
(8 hexadecimal digits, or group-element pairs of a sequence path) nor a keyword, or a query of more than
:data:`MAX_QUERY_CHARS` characters is refused with 400 and a message that says what is wrong.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from urllib.parse import quote, unquote

logger = logging.getLogger(__name__)

__all__ = ["DICOMWEB_ROUTE", "MAX_QUERY_CHARS", "QIDO_ROOT", "QidoError", "qido_uri"]

#: Where the viewer sends its searches (below Orthanc's root).
QIDO_ROOT = "/lesion-ai/qido"
#: Orthanc's DICOMweb plugin's root.
DICOMWEB_ROUTE = "/dicom-web"
#: The longest query (names and values together) passed on.
MAX_QUERY_CHARS = 4096

_UID = r"[0-9]+(?:\.[0-9]+)*"
_RESOURCE = re.compile(
    rf"^(?:studies|series|instances|studies/{_UID}/series|studies/{_UID}/instances"
    rf"|studies/{_UID}/series/{_UID}/instances)$"
)
_FIELD = re.compile(r"^(?:all|[0-9A-Fa-f]{8}(?:\.[0-9A-Fa-f]{8})*|[A-Za-z][A-Za-z0-9]{0,63})$")
_NAME = re.compile(r"^[A-Za-z0-9_.]{1,64}$")


class QidoError(ValueError):
    """A search the node does not pass on (the message says why; answered with 400)."""


def qido_uri(resource: str, query: Mapping[str, str]) -> str:
    """The URI of Orthanc's DICOMweb route for one of the viewer's searches.

    Parameters
    ----------
    resource : str
        The path below the QIDO root (``studies``, ``studies/UID/series``, ...).
    query : mapping of str to str
        The search's parameters as Orthanc gives them to plugins: one value per name, still
        percent-encoded (``includefield=00081030%2C00080060`` is what OHIF sends); each is decoded once.

    Returns
    -------
    str
        ``/dicom-web/RESOURCE?...``, every ``includefield`` value split at its commas into repeated
        parameters, all values percent-encoded.

    Raises
    ------
    QidoError
        When the resource is not a QIDO-RS search, a UID in it is invalid, a parameter name is not a
        keyword, tag or option, an ``includefield`` names no attribute, or the query is too long.
    """
    resource = resource.strip("/")
    if not _RESOURCE.fullmatch(resource) or any(len(part) > 64 for part in resource.split("/")):
        raise QidoError(
            f"not a QIDO-RS search: {resource[:80]!r} (the viewer's QIDO root serves studies, series and "
            "instances, and the series and instances of a study or series)"
        )
    if sum(len(name) + len(value) + 2 for name, value in query.items()) > MAX_QUERY_CHARS:
        raise QidoError(f"the query is longer than {MAX_QUERY_CHARS} characters")
    pairs: list[tuple[str, str]] = []
    for raw_name, raw_value in query.items():
        name, value = unquote(raw_name), unquote(raw_value)
        if not _NAME.fullmatch(name):
            raise QidoError(f"invalid query parameter name {name[:80]!r}")
        if name.lower() != "includefield":
            pairs.append((name, value))
            continue
        for item in (part.strip() for part in value.split(",")):
            if not _FIELD.fullmatch(item):
                raise QidoError(
                    f"includefield {item[:80]!r} names no attribute: give tags (8 hexadecimal digits, such as "
                    "00081030), keywords (StudyDescription) or all, separated by commas"
                )
            pairs.append(("includefield", item))
    search = "&".join(f"{quote(name, safe='')}={quote(value, safe='')}" for name, value in pairs)
    uri = f"{DICOMWEB_ROUTE}/{resource}"
    return f"{uri}?{search}" if search else uri
