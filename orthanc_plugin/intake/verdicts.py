"""What radiologists say about the AI's findings: an SR saved from the viewer, read as verdicts.

When the node evaluates a stable study (:meth:`orthanc_plugin.plugin.NodePlugin.enqueue_study`), each SR
instance of the study that is not the node's own (not a result series of its record, Manufacturer not the
node's) is compared with the node's newest SR of the study (:mod:`lesion_engine.labels.verdicts`): each of the AI's
measurements a viewer shows is **accepted** (a saved measurement of the same tool on the same image within
``VerdictToleranceMm``) or **rejected**, and each saved measurement that matches none is **missed**.

* Who: the SR's Person Observer Name (TID 1002), else its OperatorsName, else the AE title that sent it
  (Orthanc's ``RemoteAET``); else unknown, with Orthanc's ``Origin`` (``Plugins`` for OHIF's STOW-RS through
  the DICOMweb plugin, which records no user). OHIF writes the placeholder observer ``unknown^unknown``, which
  counts as no name. When: the SR's ContentDate/Time, and when the
  node recorded it.
* A later SR of the same study and model replaces the earlier verdicts as the study's current ones; every
  earlier record is kept (``GET /lesion-ai/verdicts?history=true``).
* An SR that cannot be judged (its measurements on images of another study, points outside their image, more
  than :data:`lesion_engine.labels.sr_measurements.MAX_MEASUREMENTS` measurements, malformed geometry, a file over
  :data:`MAX_SR_BYTES`, another StudyInstanceUID) is recorded as **no verdict** with the reason, logged, and
  changes no current verdict.

Recording writes nothing into Orthanc and queues nothing (the SR is not an input of any job: the loop guard
leaves SRs out), so it never starts a job; it never raises, so a study's evaluation goes on whatever the SR
holds. Records live in a SQLite table of the node's data folder (:data:`VERDICTS_FILE`, 0600).
"""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pydicom
from pydicom.errors import InvalidDicomError

from lesion_engine.errors import LesionAIError
from lesion_engine.labels.sr_measurements import planar_measurements
from lesion_engine.labels.verdicts import ImageGeometry, Verdicts, judge, shown_in_viewer
from orthanc_plugin.intake.private_table import PrivateTable, check_page
from orthanc_plugin.intake.studies import OrthancSeries, OrthancStudy
from orthanc_plugin.node.orthanc_api import NotFoundError, RestApi, quote_id

logger = logging.getLogger(__name__)

__all__ = [
    "MAX_SR_BYTES",
    "SR_SOP_CLASS_UIDS",
    "VERDICTS_FILE",
    "VerdictRecord",
    "VerdictStore",
    "record_verdicts",
]

VERDICTS_FILE = "verdicts.sqlite"
#: SR storage classes that hold TID 1500 measurements (Basic, Enhanced, Comprehensive, Comprehensive 3D).
SR_SOP_CLASS_UIDS = frozenset(
    str(sop_class)
    for sop_class in (
        pydicom.uid.BasicTextSRStorage,
        pydicom.uid.EnhancedSRStorage,
        pydicom.uid.ComprehensiveSRStorage,
        pydicom.uid.Comprehensive3DSRStorage,
    )
)
#: Largest SR file read (a radiologist's report is a few tens of kB).
MAX_SR_BYTES = 8 << 20
_PLACEHOLDER_NAMES = {"", "unknown^unknown", "unknown", "anonymous"}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS lesion_ai_verdicts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    sop_instance_uid TEXT NOT NULL UNIQUE,
    instance_id TEXT NOT NULL,
    study_id TEXT NOT NULL,
    study_uid TEXT NOT NULL,
    model TEXT NOT NULL,
    current INTEGER NOT NULL,
    document TEXT NOT NULL,
    recorded_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS lesion_ai_verdicts_study ON lesion_ai_verdicts (study_id);
CREATE INDEX IF NOT EXISTS lesion_ai_verdicts_instance ON lesion_ai_verdicts (instance_id);
"""
_COLUMNS = "id, sop_instance_uid, instance_id, study_id, study_uid, model, current, document, recorded_at"


@dataclass(frozen=True)
class VerdictRecord:
    """One saved SR, read as verdicts on the AI's findings (or refused as no verdict).

    Attributes
    ----------
    study, study_instance_uid : str
        Orthanc ID and StudyInstanceUID of the study.
    instance, sop_instance_uid : str
        Orthanc ID and SOPInstanceUID of the saved SR.
    model : str
        The algorithm whose findings were judged (``name version`` from the node's SR; '' when refused
        before it was known).
    sender : dict
        Who saved it: ``name`` (the first of ``observer``, ``operator``, ``remote_aet``, ``origin`` known) and
        each of these.
    content_time : str
        The SR's ContentDate and ContentTime (ISO form, '' when absent).
    verdicts : Verdicts or None
        The verdicts; None when refused.
    refused : str or None
        Why the SR gives no verdict.
    recorded_at : float
        When the node recorded it (seconds since the epoch).
    current : bool
        The study's current verdicts for this model (the newest SR that gave verdicts).
    id : int or None
        Row number in the store.
    """

    study: str
    study_instance_uid: str
    instance: str
    sop_instance_uid: str
    model: str
    sender: dict[str, str]
    content_time: str
    verdicts: Verdicts | None
    refused: str | None
    recorded_at: float
    current: bool = False
    id: int | None = None

    def document(self) -> dict[str, Any]:
        """What is stored besides the indexed columns."""
        return {
            "sender": self.sender,
            "content_time": self.content_time,
            "refused": self.refused,
            **(self.verdicts.to_json() if self.verdicts is not None else {"counts": None}),
        }

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form (``GET /lesion-ai/verdicts``): IDs, UIDs, the sender's name, no patient data."""
        return {
            "id": self.id,
            "study": self.study,
            "study_instance_uid": self.study_instance_uid,
            "instance": self.instance,
            "sop_instance_uid": self.sop_instance_uid,
            "model": self.model,
            "current": self.current,
            **self.document(),
            "recorded_at": datetime.fromtimestamp(self.recorded_at, UTC).isoformat(timespec="seconds"),
        }


class VerdictStore(PrivateTable):
    """The verdicts' table (SQLite, one file of the data folder, 0600; in cluster mode in the cluster database).

    Parameters
    ----------
    path : Path or str
        The database file (created when missing, with its folder), or the cluster database's
        ``postgresql://`` URL.
    """

    def __init__(self, path: Path | str) -> None:
        super().__init__(path, "lesion_ai_verdicts", _SCHEMA)

    def add(self, record: VerdictRecord) -> bool:
        """Store a record; one that gives verdicts becomes its study's current one for its model (earlier
        ones stay as history). False when this SR was recorded before (nothing changes)."""
        current = record.verdicts is not None
        with self.transaction():
            cursor = self._execute(
                "INSERT OR IGNORE INTO lesion_ai_verdicts (sop_instance_uid, instance_id, study_id, study_uid, "
                "model, current, document, recorded_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    record.sop_instance_uid,
                    record.instance,
                    record.study,
                    record.study_instance_uid,
                    record.model,
                    0,
                    json.dumps(record.document(), sort_keys=True),
                    record.recorded_at,
                ),
            )
            added = bool(cursor.rowcount == 1)
            if added and current:
                self._execute(
                    "UPDATE lesion_ai_verdicts SET current = CASE WHEN sop_instance_uid = ? THEN 1 ELSE 0 END "
                    "WHERE study_id = ? AND model = ?",
                    (record.sop_instance_uid, record.study, record.model),
                )
        return added

    def _where(self, study: str | None, model: str | None, history: bool) -> tuple[str, tuple[Any, ...]]:
        clauses, args = [], []
        if not history:
            clauses.append("current = 1")
        if study:
            clauses.append("(study_id = ? OR study_uid = ?)")
            args += [study, study]
        if model:
            clauses.append("model = ?")
            args.append(model)
        return (" WHERE " + " AND ".join(clauses) if clauses else ""), tuple(args)

    def list(
        self,
        study: str | None = None,
        model: str | None = None,
        *,
        history: bool = False,
        limit: int = 100,
        offset: int = 0,
    ) -> list[VerdictRecord]:
        """Records, newest first: the current ones, or every one with ``history`` (refusals included).

        Raises
        ------
        ValueError
            ``limit`` (1 to 10,000) or ``offset`` out of range.
        """
        check_page(limit, offset)
        where, args = self._where(study, model, history)
        with self._lock:
            rows = self._execute(
                f"SELECT {_COLUMNS} FROM lesion_ai_verdicts{where} ORDER BY id DESC LIMIT ? OFFSET ?",  # noqa: S608 - fixed text
                (*args, limit, offset),
            ).fetchall()
        return [_from_row(row) for row in rows]

    def count(self, study: str | None = None, model: str | None = None, *, history: bool = False) -> int:
        """How many records :meth:`list` pages through."""
        where, args = self._where(study, model, history)
        with self._lock:
            row = self._execute(f"SELECT COUNT(*) FROM lesion_ai_verdicts{where}", args).fetchone()  # noqa: S608
        return int(row[0])

    def summary(self) -> dict[str, dict[str, Any]]:
        """Per model, over the studies' current verdicts: ``accepted``, ``rejected``, ``missed``, ``studies``
        and ``ppv`` (accepted / (accepted + rejected); None before any verdict)."""
        with self._lock:
            rows = self._execute(
                "SELECT model, document FROM lesion_ai_verdicts WHERE current = 1"
            ).fetchall()
        out: dict[str, dict[str, Any]] = {}
        for model, document in rows:
            counts = json.loads(document).get("counts") or {}
            figures = out.setdefault(str(model), {"accepted": 0, "rejected": 0, "missed": 0, "studies": 0})
            for key in ("accepted", "rejected", "missed"):
                figures[key] += int(counts.get(key, 0))
            figures["studies"] += 1
        for figures in out.values():
            judged = figures["accepted"] + figures["rejected"]
            figures["ppv"] = round(figures["accepted"] / judged, 4) if judged else None
        return out


def _from_row(row: Any) -> VerdictRecord:
    number, sop, instance, study, study_uid, model, current, document, recorded_at = row
    data = json.loads(document)
    verdicts = None
    if data.get("refused") is None and data.get("counts") is not None:
        verdicts = Verdicts.from_json(data)
    return VerdictRecord(
        study=str(study),
        study_instance_uid=str(study_uid),
        instance=str(instance),
        sop_instance_uid=str(sop),
        model=str(model),
        sender={str(k): str(v) for k, v in (data.get("sender") or {}).items()},
        content_time=str(data.get("content_time", "")),
        verdicts=verdicts,
        refused=None if data.get("refused") is None else str(data["refused"]),
        recorded_at=float(recorded_at),
        current=bool(current),
        id=int(number),
    )


# -- finding and judging saved SRs -------------------------------------------------------------------------
def _observer(sr: Any) -> str:
    for item in sr.get("ContentSequence") or ():
        codes = item.get("ConceptNameCodeSequence")
        if item.get("ValueType") == "PNAME" and codes and codes[0].get("CodeValue") == "121008":
            return str(item.get("PersonName", "") or "")
    return ""


def _sender(sr: Any, metadata: Mapping[str, str]) -> dict[str, str]:
    found = {
        "observer": _observer(sr),
        "operator": str(sr.get("OperatorsName", "") or ""),
        "remote_aet": str(metadata.get("RemoteAET", "") or ""),
        "origin": str(metadata.get("Origin", "") or ""),
    }
    found = {k: v for k, v in found.items() if v.strip().casefold() not in _PLACEHOLDER_NAMES}
    named = [found[k] for k in ("observer", "operator", "remote_aet") if k in found]
    if named:
        return {"name": named[0], **found}
    # A STOW-RS through Orthanc's DICOMweb plugin records no user (origin "Plugins").
    origin = found.get("origin")
    return {"name": f"unknown (stored through Orthanc's {origin})" if origin else "unknown", **found}


def _content_time(sr: Any) -> str:
    date, clock = str(sr.get("ContentDate", "") or ""), str(sr.get("ContentTime", "") or "")
    if len(date) != 8 or not date.isdigit():
        return ""
    text = f"{date[:4]}-{date[4:6]}-{date[6:]}"
    return (
        f"{text}T{clock[:2]}:{clock[2:4]}:{clock[4:6]}" if len(clock) >= 6 and clock[:6].isdigit() else text
    )


def _read_sr(api: RestApi, instance: str) -> Any:
    size = api.get_json(f"/instances/{quote_id(instance)}").get("FileSize")
    if isinstance(size, int) and size > MAX_SR_BYTES:
        raise LesionAIError(f"the SR file is {size} bytes, more than the {MAX_SR_BYTES} read")
    data = api.get_bytes(f"/instances/{quote_id(instance)}/file")
    if len(data) > MAX_SR_BYTES:
        raise LesionAIError(f"the SR file is {len(data)} bytes, more than the {MAX_SR_BYTES} read")
    try:
        return pydicom.dcmread(io.BytesIO(data))
    except (InvalidDicomError, ValueError, EOFError) as exc:
        raise LesionAIError(f"the SR file cannot be read: {exc}") from None


def _geometry(api: RestApi, instance: str) -> ImageGeometry | None:
    tags = api.get_json(f"/instances/{quote_id(instance)}/simplified-tags")
    try:
        row, column = (float(v) for v in str(tags.get("PixelSpacing", "")).split("\\"))
        return ImageGeometry(int(tags["Rows"]), int(tags["Columns"]), row, column)
    except (KeyError, TypeError, ValueError):
        return None


class _Judge:
    """Judges the saved SRs of one study against the node's newest SR there."""

    def __init__(self, api: RestApi, study: OrthancStudy, tolerance_mm: float) -> None:
        self.api, self.study, self.tolerance_mm = api, study, tolerance_mm
        self._uids: dict[str, str] | None = None
        self._images: dict[str, ImageGeometry | None] = {}

    def instance_of(self, uid: str) -> str | None:
        if self._uids is None:
            listed = self.api.get_json(f"/studies/{quote_id(self.study.study_id)}/instances")
            self._uids = {
                str(i.get("MainDicomTags", {}).get("SOPInstanceUID", "")): str(i["ID"]) for i in listed
            }
        return self._uids.get(uid)

    def images(self, uids: set[str]) -> dict[str, ImageGeometry]:
        out = {}
        for uid in uids:
            if uid not in self._images:
                instance = self.instance_of(uid)
                self._images[uid] = None if instance is None else _geometry(self.api, instance)
            found = self._images[uid]
            if found is not None:
                out[uid] = found
        return out

    def verdicts(self, node_sr: Any, saved_sr: Any) -> tuple[str, Verdicts]:
        if str(saved_sr.get("StudyInstanceUID", "")) != self.study.study_instance_uid:
            raise LesionAIError("the SR names another StudyInstanceUID than its study's")
        findings = shown_in_viewer(planar_measurements(node_sr))
        saved = planar_measurements(saved_sr)
        images = self.images({m.sop_instance_uid for m in (*findings, *saved)})
        model = next((f.algorithm for f in findings if f.algorithm), "")
        return model, judge(findings, saved, images, self.tolerance_mm)


def _node_sr(api: RestApi, study: OrthancStudy) -> tuple[Any, str] | None:
    """The node's newest SR of the study (its record's result series), read, with its Orthanc ID."""
    ours = [
        s
        for s in study.all_series
        if s.series_id in study.record.result_series and s.instances and s.sop_class_uid in SR_SOP_CLASS_UIDS
    ]
    if not ours:
        return None
    newest = max(ours, key=lambda s: str(s.main.get("SeriesDate", "")) + str(s.main.get("SeriesTime", "")))
    instance = newest.instances[-1]
    return _read_sr(api, instance), instance


def _saved_srs(study: OrthancStudy, manufacturers: tuple[str, ...]) -> list[OrthancSeries]:
    names = {m.strip().casefold() for m in manufacturers}
    return [
        s
        for s in study.all_series
        if s.instances
        and s.series_id not in study.record.result_series
        and str(s.main.get("Manufacturer", "")).strip().casefold() not in names
        and s.sop_class_uid in SR_SOP_CLASS_UIDS
    ]


def record_verdicts(
    api: RestApi,
    store: VerdictStore,
    study: OrthancStudy,
    manufacturers: tuple[str, ...],
    tolerance_mm: float,
) -> list[VerdictRecord]:
    """Record the radiologists' saved SRs of a study as verdicts (see the module docstring). Never raises.

    Parameters
    ----------
    api : RestApi
        Orthanc's REST API.
    store : VerdictStore
        Where verdicts are kept.
    study : OrthancStudy
        The study as evaluated (with its record and series).
    manufacturers : tuple of str
        Manufacturer names of the node's results.
    tolerance_mm : float
        Largest distance at which a saved measurement is the AI's kept.

    Returns
    -------
    list of VerdictRecord
        The records made now (refusals included).
    """
    try:
        return _record(api, store, study, manufacturers, tolerance_mm)
    except Exception:
        logger.exception("study %s: recording its radiologists' SRs as verdicts failed", study.study_id)
        return []


def _record(
    api: RestApi,
    store: VerdictStore,
    study: OrthancStudy,
    manufacturers: tuple[str, ...],
    tolerance_mm: float,
) -> list[VerdictRecord]:
    pending = [
        (series, instance)
        for series in _saved_srs(study, manufacturers)
        for instance in series.instances
        if not store.has_instance(instance)
    ]
    if not pending:
        return []
    node = _node_sr(api, study)
    if node is None:
        logger.info(
            "study %s: %d SR(s) not read as verdicts: the study holds no SR of the node",
            study.study_id,
            len(pending),
        )
        return []
    node_sr, _ = node
    judge_study = _Judge(api, study, tolerance_mm)
    recorded = []
    for series, instance in pending:
        try:
            metadata = api.get_json(f"/instances/{quote_id(instance)}/metadata?expand")
        except NotFoundError:
            continue
        saved_sr: Any = None
        model, verdicts, refused = "", None, None
        try:
            saved_sr = _read_sr(api, instance)
            model, verdicts = judge_study.verdicts(node_sr, saved_sr)
        except NotFoundError:
            continue
        except LesionAIError as exc:
            refused = str(exc)
        uid = str(saved_sr.get("SOPInstanceUID", "")) if saved_sr is not None else ""
        record = VerdictRecord(
            study=study.study_id,
            study_instance_uid=study.study_instance_uid,
            instance=instance,
            sop_instance_uid=uid or f"orthanc:{instance}",
            model=model,
            sender=_sender(saved_sr, metadata) if saved_sr is not None else {"name": "unknown"},
            content_time=_content_time(saved_sr) if saved_sr is not None else "",
            verdicts=verdicts,
            refused=refused,
            recorded_at=time.time(),
        )
        if not store.add(record):
            continue
        recorded.append(record)
        if refused is not None:
            logger.warning(
                "study %s: SR %s (series %s) gives no verdict: %s",
                study.study_id,
                uid or f"instance {instance}",
                series.series_id,
                refused,
            )
        elif verdicts is not None:
            logger.info(
                "study %s (%s): SR %s recorded as verdicts on %s: %s accepted, %s rejected, %s missed",
                study.study_id,
                study.study_instance_uid,
                uid,
                model or "the AI",
                *verdicts.counts.values(),
            )
    return recorded
