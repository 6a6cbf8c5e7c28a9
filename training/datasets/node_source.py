"""``lesion-ai dataset build --from-node URL``: the labels radiologists sent back to a node, and their studies.

The node records each radiologist's SEG stored into a study it processed as a label of that study
(``GET /lesion-ai/labels``). For each labelled study this module downloads, over Orthanc's REST API, the
study's MR image series (not the node's own results) and the label's SEG into a temporary folder under the
output folder, one study at a time and at most ``max_study_bytes`` of it, hands the folder to the build
(:class:`training.datasets.dataset_build.DatasetBuilder`, which reads it as it reads a folder of studies) and deletes
it. A study with several labels uses the newest (a radiologist's correction is stored as a new SEG); the
others are reported as ignored, as are SEGs the node refused as labels (malformed), whatever their age. Studies that cannot be fetched are reported as skipped, with the reason.

The node also records radiologists' verdicts on the AI's findings, read from the reports they save in the
viewer (``GET /lesion-ai/verdicts``, each study's current verdicts): this module reads every page of them
(:meth:`NodeSource.verdicts`) into :class:`NodeVerdicts` and hands each labelled study's to the build with
the study, which draws the rejected findings as negative regions and the missed ones as lesion hints
(:mod:`training.datasets.verdict_masks`). Each record is validated (its fields, UIDs, verdicts, counts, and bounds:
at most :data:`~lesion_engine.labels.sr_measurements.MAX_MEASUREMENTS` measurements of a kind and
:data:`~lesion_engine.labels.sr_measurements.MAX_POINTS` points per measurement, the node's own limits); a malformed
one, or a listing that cannot be read, is reported as skipped with the reason and the build goes on without
it. A study with verdicts but no label is no training case: it is reported as skipped and not fetched.

Credentials: HTTP Basic, from ``--user``/``--password`` or :data:`USER_ENV`/:data:`PASSWORD_ENV`. HTTP with
the standard library only (the training package does not import the node's package).
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import logging
import math
import re
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote, urlsplit

from lesion_engine.errors import LesionAIError
from lesion_engine.labels.sr_measurements import MAX_MEASUREMENTS, MAX_POINTS, PlanarMeasurement
from lesion_engine.results.settings import PRODUCT_NAME
from training.datasets.dataset_inputs import StudyInput, find_studies

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_MAX_STUDY_BYTES",
    "MAX_VERDICT_RECORDS",
    "PASSWORD_ENV",
    "USER_ENV",
    "NodeLabel",
    "NodeSource",
    "NodeSourceError",
    "NodeVerdicts",
    "StudySink",
    "add_node_studies",
]

USER_ENV = "LESION_AI_NODE_USER"
PASSWORD_ENV = "LESION_AI_NODE_PASSWORD"  # noqa: S105 - the variable's name, not a password
#: Most bytes downloaded for one study (the temporary folder holds one study at a time).
DEFAULT_MAX_STUDY_BYTES = 8 * 1024**3
#: Prefix of the temporary folders under the output folder (left-overs of a killed run are removed).
TEMP_PREFIX = ".node-study-"
_PAGE = 1000
_CHUNK = 1 << 20
_ORTHANC_ID = re.compile(r"^[0-9A-Za-z-]{1,80}$")
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
#: Most verdict records read from a node (100 pages); the rest is reported as not read.
MAX_VERDICT_RECORDS = 100_000
#: Longest text field of a verdict record read (tool, label, algorithm, model, graphic type).
_MAX_TEXT = 1024
#: Largest pixel coordinate accepted (the node keeps points on their image: within a pixel of its edge).
_MAX_COORDINATE = 1e6
_VERDICTS_SOURCE = "node verdicts (GET /lesion-ai/verdicts)"


class NodeSourceError(LesionAIError):
    """The node cannot be reached or read (wrong URL, refused credentials, not a lesion-ai node); the message
    says which and how to fix it."""


class _NotFoundError(Exception):
    """HTTP 404."""


class _StudySkipError(Exception):
    """One labelled study cannot be fetched; the message says why."""


@dataclass(frozen=True)
class NodeLabel:
    """A label as the node lists it (what the build needs of ``GET /lesion-ai/labels``).

    Attributes
    ----------
    id : int
        The node's label number (larger is newer).
    study, series, instance : str
        Orthanc IDs of the study, the SEG series and the SEG instance.
    study_instance_uid, sop_instance_uid : str
        The study's and the SEG's UIDs.
    refused : str or None
        Why the node refused the SEG as a label (malformed); None for a label to use.
    """

    id: int
    study: str
    series: str
    instance: str
    study_instance_uid: str
    sop_instance_uid: str
    refused: str | None = None

    def __post_init__(self) -> None:
        for name in ("study", "series", "instance"):
            if not _ORTHANC_ID.match(getattr(self, name)):
                raise ValueError(f"label {self.id}: {name} {getattr(self, name)!r} is not an Orthanc ID")
        for name in ("study_instance_uid", "sop_instance_uid"):
            value = getattr(self, name)
            if not _UID.match(value) or len(value) > 64:
                raise ValueError(f"label {self.id}: {name} {value!r} is not a DICOM UID")

    @classmethod
    def from_json(cls, data: Any) -> NodeLabel:
        """Read one entry of ``GET /lesion-ai/labels``.

        Raises
        ------
        ValueError
            A missing or malformed field (named).
        """
        if not isinstance(data, dict):
            raise ValueError(f"a label must be a JSON object, got {type(data).__name__}")
        try:
            return cls(
                id=int(data["id"]),
                study=str(data["study"]),
                series=str(data["series"]),
                instance=str(data["instance"]),
                study_instance_uid=str(data["study_instance_uid"]),
                sop_instance_uid=str(data["sop_instance_uid"]),
                refused=str(data["refused"]) if data.get("refused") is not None else None,
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"a label lacks the field {exc}") from None


def _text(data: dict[str, Any], key: str, where: str, *, required: bool = False) -> str:
    """A text field of a verdict record ('' when absent and not ``required``), bounded."""
    value = data.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise ValueError(f"{where}: {key} must be text, got {type(value).__name__}")
    if len(value) > _MAX_TEXT:
        raise ValueError(f"{where}: {key} is longer than {_MAX_TEXT} characters")
    return value


def _uid(value: Any, what: str) -> str:
    """``value`` when it is a DICOM UID."""
    if not isinstance(value, str) or not _UID.match(value) or len(value) > 64:
        raise ValueError(f"{what} {value!r} is not a DICOM UID")
    return value


def _count(value: Any, what: str) -> int:
    """``value`` when it is a count (an integer >= 0; not a boolean)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{what} must be a count (an integer >= 0), got {value!r}")
    return value


def _measurement(data: Any, where: str) -> PlanarMeasurement:
    """One measurement of a verdict record (a finding's or a missed one), validated and bounded."""
    if not isinstance(data, dict):
        raise ValueError(f"{where} must be a JSON object, got {type(data).__name__}")
    uid = _uid(data.get("sop_instance_uid"), f"{where}: its image")
    points = data.get("points")
    if not isinstance(points, list) or not points:
        raise ValueError(f"{where}: points must be a non-empty list of [column, row] pairs")
    if len(points) > MAX_POINTS:
        raise ValueError(f"{where}: {len(points)} points, more than the {MAX_POINTS} accepted")
    pairs: list[tuple[float, float]] = []
    for point in points:
        if (
            not isinstance(point, list)
            or len(point) != 2
            or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in point)
        ):
            raise ValueError(f"{where}: a point is not a [column, row] pair of numbers: {str(point)[:60]}")
        column, row = float(point[0]), float(point[1])
        if not all(math.isfinite(v) and abs(v) <= _MAX_COORDINATE for v in (column, row)):
            raise ValueError(f"{where}: a point is not finite or lies far outside any image: {point}")
        pairs.append((column, row))
    return PlanarMeasurement(
        tool=_text(data, "tool", where),
        label=_text(data, "label", where),
        sop_instance_uid=uid,
        graphic_type=_text(data, "graphic_type", where, required=True).upper(),
        points=tuple(pairs),
        algorithm=_text(data, "algorithm", where),
    )


@dataclass(frozen=True)
class NodeVerdicts:
    """One study's current verdicts as the node lists them: what the build needs of an entry of
    ``GET /lesion-ai/verdicts`` (one saved report, judged against the AI's findings of one model).

    Attributes
    ----------
    id : int
        The node's record number (larger is newer).
    study, study_instance_uid : str
        Orthanc ID and StudyInstanceUID of the study.
    sop_instance_uid : str
        SOPInstanceUID of the saved report (SR) the verdicts were read from.
    model : str
        The algorithm whose findings were judged (``name version``).
    counts : dict of str to int
        ``accepted``, ``rejected`` and ``missed``, as the node counted them.
    accepted, rejected : tuple of PlanarMeasurement
        The AI's measurements the radiologist kept, and those they deleted.
    missed : tuple of PlanarMeasurement
        The measurements the radiologist drew that match none of the AI's.
    """

    id: int
    study: str
    study_instance_uid: str
    sop_instance_uid: str
    model: str
    counts: dict[str, int] = field(hash=False)
    accepted: tuple[PlanarMeasurement, ...] = ()
    rejected: tuple[PlanarMeasurement, ...] = ()
    missed: tuple[PlanarMeasurement, ...] = ()

    @property
    def source(self) -> str:
        """How reports name the record."""
        return f"node verdict record {self.id} (SR {self.sop_instance_uid})"

    def fingerprint(self) -> dict[str, Any]:
        """What a build's output depends on (JSON-ready): the record and the geometry it draws."""
        return {
            "id": self.id,
            "sop_instance_uid": self.sop_instance_uid,
            "counts": self.counts,
            "rejected": [m.to_json() for m in self.rejected],
            "missed": [m.to_json() for m in self.missed],
        }

    @classmethod
    def from_json(cls, data: Any) -> NodeVerdicts | None:
        """Read one entry of ``GET /lesion-ai/verdicts``; None for an entry that gives no verdict (refused by
        the node: ``counts`` null) or that is not the study's current one.

        Raises
        ------
        ValueError
            A missing or malformed field, or more measurements or points than accepted (named).
        """
        if not isinstance(data, dict):
            raise ValueError(f"a verdict record must be a JSON object, got {type(data).__name__}")
        number = data.get("id")
        if isinstance(number, bool) or not isinstance(number, int) or number < 1:
            raise ValueError(f"a verdict record's id must be a positive integer, got {number!r}")
        where = f"verdict record {number}"
        if data.get("refused") is not None or data.get("counts") is None:
            return None
        if data.get("current") is not True:
            return None
        study = data.get("study")
        if not isinstance(study, str) or not _ORTHANC_ID.match(study):
            raise ValueError(f"{where}: study {study!r} is not an Orthanc ID")
        study_uid = _uid(data.get("study_instance_uid"), f"{where}: study_instance_uid")
        sr_uid = _uid(data.get("sop_instance_uid"), f"{where}: sop_instance_uid")
        model = _text(data, "model", where)
        raw_counts = data["counts"]
        if not isinstance(raw_counts, dict):
            raise ValueError(f"{where}: counts must be a JSON object, got {type(raw_counts).__name__}")
        counts = {
            k: _count(raw_counts.get(k), f"{where}: counts.{k}") for k in ("accepted", "rejected", "missed")
        }
        findings, missed = data.get("findings"), data.get("missed")
        if not isinstance(findings, list) or not isinstance(missed, list):
            raise ValueError(f"{where}: findings and missed must be lists")
        for name, items in (("findings", findings), ("missed", missed)):
            if len(items) > MAX_MEASUREMENTS:
                raise ValueError(f"{where}: {len(items)} {name}, more than the {MAX_MEASUREMENTS} accepted")
        judged: dict[str, list[PlanarMeasurement]] = {"accepted": [], "rejected": []}
        for n, item in enumerate(findings, start=1):
            if not isinstance(item, dict):
                raise ValueError(f"{where}: finding {n} must be a JSON object, got {type(item).__name__}")
            verdict = item.get("verdict")
            if verdict not in judged:
                raise ValueError(
                    f"{where}: finding {n}: verdict must be 'accepted' or 'rejected', got {verdict!r}"
                )
            judged[str(verdict)].append(_measurement(item, f"{where}: finding {n}"))
        drawn = [_measurement(item, f"{where}: missed {n}") for n, item in enumerate(missed, start=1)]
        listed = {
            "accepted": len(judged["accepted"]),
            "rejected": len(judged["rejected"]),
            "missed": len(drawn),
        }
        if listed != counts:
            raise ValueError(f"{where}: its counts {counts} do not match the measurements listed {listed}")
        return cls(
            id=number,
            study=study,
            study_instance_uid=study_uid,
            sop_instance_uid=sr_uid,
            model=model,
            counts=counts,
            accepted=tuple(judged["accepted"]),
            rejected=tuple(judged["rejected"]),
            missed=tuple(drawn),
        )


class Reports(Protocol):
    """Where inputs that are not built are reported."""

    def skip(self, source: str, reason: str) -> None:
        """Report an input that was not built, and why."""
        ...

    def ignore(self, source: str, reason: str) -> None:
        """Report an input that was left out on purpose, and why."""
        ...


class StudySink(Reports, Protocol):
    """Where fetched studies go (:class:`training.datasets.dataset_build.DatasetBuilder`)."""

    def add(self, study: StudyInput, verdicts: Sequence[NodeVerdicts] = ()) -> str | None:
        """Build one study's case (its SEGs as labels; ``verdicts``: the study's current verdicts on the AI's
        findings); its case id, or None when it was skipped."""
        ...


class NodeSource:
    """A lesion-ai node's REST API (Orthanc's, with the node's ``/lesion-ai/`` routes).

    Parameters
    ----------
    url : str
        The node's base URL, e.g. ``http://node:8042``.
    user, password : str, optional
        HTTP Basic credentials (Orthanc's ``RegisteredUsers``).
    node_manufacturers : tuple of str
        Manufacturer of the node's own results (their series are not downloaded).
    max_study_bytes : int
        Most bytes fetched for one study; a larger study is skipped.
    timeout_s : float
        Socket timeout of each request.

    Raises
    ------
    ValueError
        Not an http(s) URL, a password without a user, a limit below 1.
    """

    def __init__(
        self,
        url: str,
        user: str | None = None,
        password: str | None = None,
        node_manufacturers: tuple[str, ...] = (PRODUCT_NAME,),
        max_study_bytes: int = DEFAULT_MAX_STUDY_BYTES,
        timeout_s: float = 120.0,
    ) -> None:
        parts = urlsplit(url.rstrip("/"))
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(
                f"--from-node must be the node's http(s) URL, e.g. http://node:8042; got {url!r}"
            )
        if password is not None and user is None:
            raise ValueError(f"a password was given without a user: give --user or {USER_ENV}")
        if max_study_bytes < 1:
            raise ValueError(f"max_study_bytes must be at least 1, got {max_study_bytes}")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        self.url = url.rstrip("/")
        self.node_manufacturers = tuple(n.strip().casefold() for n in node_manufacturers)
        self.max_study_bytes = max_study_bytes
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port or (443 if self._https else 80)
        self._prefix = parts.path
        self._timeout_s = timeout_s
        self._headers: dict[str, str] = {}
        if user is not None:
            token = base64.b64encode(f"{user}:{password or ''}".encode()).decode("ascii")
            self._headers["Authorization"] = f"Basic {token}"
        self._conn: http.client.HTTPConnection | None = None

    def __repr__(self) -> str:
        return f"NodeSource({self.url!r})"

    # -- HTTP ------------------------------------------------------------------------------------------
    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            self._conn = cls(self._host, self._port, timeout=self._timeout_s)
        return self._conn

    def close(self) -> None:
        """Close the connection."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _send(self, path: str) -> http.client.HTTPResponse:
        for attempt in (1, 2):
            conn = self._connection()
            try:
                conn.request("GET", self._prefix + path, headers=self._headers)
                return conn.getresponse()
            except (http.client.HTTPException, OSError) as exc:
                self.close()
                if attempt == 1 and isinstance(exc, http.client.RemoteDisconnected | ConnectionResetError):
                    continue  # a kept-alive connection closed by the server fails once
                raise NodeSourceError(
                    f"the node at {self.url} cannot be reached ({exc}); check the URL"
                ) from exc
        raise NodeSourceError(f"the node at {self.url} closed the connection twice")

    @contextlib.contextmanager
    def _get(self, path: str) -> Iterator[http.client.HTTPResponse]:
        """GET ``path``: the response of a 2xx answer (read it inside the ``with``)."""
        response = self._send(path)
        if response.status == 401:
            response.read()
            raise NodeSourceError(
                f"the node at {self.url} refused the credentials (HTTP 401): give --user and the password in "
                f"{PASSWORD_ENV} (or --user/--password, or {USER_ENV})"
            )
        if not 200 <= response.status < 300:
            detail = response.read()[:300].decode("utf-8", errors="replace")
            if response.status == 404:
                raise _NotFoundError(f"GET {path}: HTTP 404 {detail}")
            raise NodeSourceError(f"GET {self.url}{path}: HTTP {response.status} {detail}")
        try:
            yield response
        except BaseException:
            self.close()  # the answer was not read to its end: the connection cannot be reused
            raise
        if response.getheader("Connection", "").lower() == "close":
            self.close()

    def get_json(self, path: str) -> Any:
        """GET, decoded as JSON."""
        with self._get(path) as response:
            data = response.read()
        try:
            return json.loads(data)
        except ValueError as exc:
            raise NodeSourceError(f"GET {self.url}{path}: the answer is not JSON ({exc})") from exc

    def download(self, path: str, target: Path, budget: int) -> int:
        """GET ``path`` into the file ``target``; returns its size.

        Raises
        ------
        _StudySkipError
            The answer is larger than ``budget`` bytes (the partial file is removed).
        """
        size = 0
        target.parent.mkdir(parents=True, exist_ok=True)
        with self._get(path) as response, target.open("wb") as handle:
            while block := response.read(_CHUNK):
                size += len(block)
                if size > budget:
                    handle.close()
                    target.unlink(missing_ok=True)
                    raise _StudySkipError(
                        f"larger than {self.max_study_bytes / 1024**3:g} GiB; raise --max-study-gb to fetch it"
                    )
                handle.write(block)
        return size

    # -- labels and studies ----------------------------------------------------------------------------
    def labels(self) -> list[NodeLabel]:
        """Every label the node lists, newest first.

        Raises
        ------
        NodeSourceError
            The node has no labels route, or answers something else than labels.
        """
        out: list[NodeLabel] = []
        offset = 0
        while True:
            try:
                page = self.get_json(f"/lesion-ai/labels?limit={_PAGE}&offset={offset}")
            except _NotFoundError as exc:
                raise NodeSourceError(
                    f"{self.url} has no /lesion-ai/labels route: it is not a lesion-ai node, or an older one "
                    f"({exc})"
                ) from exc
            if not isinstance(page, dict) or not isinstance(page.get("labels"), list):
                raise NodeSourceError(f"{self.url}/lesion-ai/labels did not answer a list of labels")
            try:
                out.extend(NodeLabel.from_json(item) for item in page["labels"])
            except ValueError as exc:
                raise NodeSourceError(f"{self.url}/lesion-ai/labels: {exc}") from exc
            if not page.get("has_more") or not page["labels"]:
                return out
            offset += len(page["labels"])

    def verdicts(self) -> tuple[list[NodeVerdicts], list[tuple[str, str]]]:
        """Every study's current verdicts the node lists (all pages, oldest record first), and what could not
        be read: ``(source, reason)`` per malformed record, or for the whole listing when it cannot be read
        (no verdicts route, an error, an answer that is not a list of verdicts; then no verdict is used).
        Never raises: the build goes on without what it cannot read."""
        found: dict[int, NodeVerdicts] = {}
        problems: list[tuple[str, str]] = []
        offset = 0
        while True:
            path = f"/lesion-ai/verdicts?limit={_PAGE}&offset={offset}"
            try:
                page = self.get_json(path)
            except _NotFoundError:
                why = "the node has no /lesion-ai/verdicts route (an older node)"
                return [], [(_VERDICTS_SOURCE, f"{why}; the cases are built without verdicts")]
            except NodeSourceError as exc:
                return [], [(_VERDICTS_SOURCE, f"not read ({exc}); the cases are built without verdicts")]
            if not isinstance(page, dict) or not isinstance(page.get("verdicts"), list):
                return [], [
                    (
                        _VERDICTS_SOURCE,
                        f"GET {path} did not answer a list of verdicts; the cases are built without verdicts",
                    )
                ]
            entries: list[Any] = page["verdicts"]
            for entry in entries:
                try:
                    record = NodeVerdicts.from_json(entry)
                except ValueError as exc:
                    number = entry.get("id") if isinstance(entry, dict) else None
                    name = (
                        f"node verdict record {number}"
                        if isinstance(number, int)
                        else "a node verdict record"
                    )
                    problems.append((name, f"malformed, not used: {exc}"))
                    continue
                if record is not None:
                    found.setdefault(record.id, record)  # a record listed twice (pages shifted) counts once
            offset += len(entries)
            if not page.get("has_more") or not entries:
                break
            if offset >= MAX_VERDICT_RECORDS:
                problems.append(
                    (
                        _VERDICTS_SOURCE,
                        f"more than {MAX_VERDICT_RECORDS} records: the older ones are not read",
                    )
                )
                break
        return sorted(found.values(), key=lambda record: record.id), problems

    def _image_series(self, label: NodeLabel) -> list[tuple[str, list[str]]]:
        """(series ID, instance IDs) of the study's MR image series that the node did not make."""
        try:
            study = self.get_json(f"/studies/{quote(label.study, safe='')}")
        except _NotFoundError:
            raise _StudySkipError("the study is no longer in the node's Orthanc") from None
        out = []
        for series_id in study.get("Series", []) if isinstance(study, dict) else []:
            try:
                series = self.get_json(f"/series/{quote(str(series_id), safe='')}")
            except _NotFoundError:
                continue
            tags = series.get("MainDicomTags", {})
            manufacturer = str(tags.get("Manufacturer", "")).strip().casefold()
            if tags.get("Modality") != "MR" or manufacturer in self.node_manufacturers:
                continue
            out.append((str(series_id), [str(i) for i in series.get("Instances", [])]))
        return out

    @contextlib.contextmanager
    def study(self, label: NodeLabel, work: Path) -> Iterator[Path]:
        """Download a labelled study (its MR image series and the label's SEG) into a temporary folder under
        ``work``; the folder is deleted when the ``with`` ends.

        Raises
        ------
        _StudySkipError
            The study or the SEG is gone, the study has no MR series, or it is too large.
        """
        folder = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=work))
        try:
            budget = self.max_study_bytes
            series = self._image_series(label)
            if not series:
                raise _StudySkipError("the study holds no MR image series (other than the node's results)")
            for series_id, instances in series:
                for instance in instances:
                    path = f"/instances/{quote(instance, safe='')}/file"
                    try:
                        budget -= self.download(
                            path, folder / "images" / series_id / f"{instance}.dcm", budget
                        )
                    except _NotFoundError:
                        logger.warning("study %s: instance %s vanished while fetched", label.study, instance)
            try:
                budget -= self.download(
                    f"/instances/{quote(label.instance, safe='')}/file",
                    folder / "seg" / f"{label.sop_instance_uid}.dcm",
                    budget,
                )
            except _NotFoundError:
                raise _StudySkipError(
                    f"the label's SEG {label.sop_instance_uid} is no longer in the study"
                ) from None
            logger.info(
                "study %s: %d series, %.1f MB fetched from the node",
                label.study,
                len(series),
                (self.max_study_bytes - budget) / 1e6,
            )
            yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)


def _newest_per_study(labels: list[NodeLabel], sink: Reports) -> list[NodeLabel]:
    newest: dict[str, NodeLabel] = {}
    for label in sorted(labels, key=lambda item: item.id, reverse=True):
        if label.refused is not None:
            sink.ignore(
                f"node label {label.id} (SEG {label.sop_instance_uid})",
                f"refused by the node: {label.refused}",
            )
            continue
        kept = newest.setdefault(label.study_instance_uid, label)
        if kept is not label:
            sink.ignore(
                f"node label {label.id} (SEG {label.sop_instance_uid})",
                f"an older label of study {label.study_instance_uid}; the newest (SEG {kept.sop_instance_uid}) "
                "is used",
            )
    return sorted(newest.values(), key=lambda item: item.id)


def _verdicts_per_study(
    source: NodeSource, labelled: set[str], sink: Reports
) -> dict[str, list[NodeVerdicts]]:
    """The node's current verdicts of the labelled studies, per StudyInstanceUID; the verdicts of studies
    without a label, malformed records and a listing that cannot be read are reported as skipped."""
    records, problems = source.verdicts()
    for where, reason in problems:
        logger.warning("%s: %s", where, reason)
        sink.skip(where, reason)
    out: dict[str, list[NodeVerdicts]] = {}
    for record in records:
        out.setdefault(record.study_instance_uid, []).append(record)
    for uid in sorted(set(out) - labelled):
        unlabelled = out.pop(uid)
        counts = {k: sum(r.counts[k] for r in unlabelled) for k in ("accepted", "rejected", "missed")}
        sink.skip(
            f"node study {unlabelled[0].study} ({uid})",
            "verdicts only, no lesion label (a radiologist's SEG): "
            f"{', '.join(r.source for r in unlabelled)} judged the AI's findings ({counts['accepted']} "
            f"accepted, {counts['rejected']} rejected, {counts['missed']} missed), but a training case needs "
            "the lesions drawn: store a SEG of the study (segments named 'ISUP n' or 'PI-RADS n') to add it; "
            "not fetched",
        )
    logger.info("verdicts of %d labelled stud(ies) read from the node", len(out))
    return out


def add_node_studies(source: NodeSource, out: Path, sink: StudySink) -> int:
    """Fetch every labelled study of a node, one at a time, and add it to a build (with the study's current
    verdicts on the AI's findings, when it has any).

    Parameters
    ----------
    source : NodeSource
        The node.
    out : Path
        The build's output folder (the temporary folders go under it: same disk; left-overs of a killed
        run are removed first).
    sink : StudySink
        The build.

    Returns
    -------
    int
        How many labelled studies were handed to the build.

    Raises
    ------
    NodeSourceError
        The node cannot be reached or read.
    """
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(f"{TEMP_PREFIX}*"):
        shutil.rmtree(stale, ignore_errors=True)
    chosen = _newest_per_study(source.labels(), sink)
    logger.info("%d labelled stud(ies) on the node %s", len(chosen), source.url)
    verdicts = _verdicts_per_study(source, {label.study_instance_uid for label in chosen}, sink)
    added = 0
    try:
        for label in chosen:
            where = f"node study {label.study} ({label.study_instance_uid})"
            try:
                with source.study(label, out) as folder:
                    found, unreadable = find_studies([folder / "images"], [folder / "seg"])
                    for entry in unreadable:
                        sink.skip(where, f"{Path(entry['input']).name}: {entry['reason']}")
                    study = next((s for s in found if s.study_instance_uid == label.study_instance_uid), None)
                    if study is None:
                        raise _StudySkipError("no readable image of the study was fetched")
                    sink.add(study, verdicts.get(label.study_instance_uid, ()))
                    added += 1
            except _StudySkipError as exc:
                sink.skip(where, str(exc))
    finally:
        source.close()
    return added
