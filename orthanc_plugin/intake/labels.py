"""What radiologists send back: a SEG stored into a study the node processed, recorded as a label.

When the node evaluates a stable study (:meth:`orthanc_plugin.plugin.NodePlugin.enqueue_study`), each SEG
instance of the study that

* is not the node's own (its Manufacturer is not the node's, no Contributing Equipment names the node
  without a manual segment: :func:`lesion_engine.labels.seg_convention.node_made`; and the study's record does not
  list its series as a result of the node), and
* references the study's images (a SeriesInstanceUID of its ReferencedSeriesSequence is one of the study's
  image series),

is recorded as a label of the study, provided that the node processed the study (its record holds a job
done). Recording writes nothing into Orthanc and queues nothing, so it never starts a job and never loops;
the loop guard keeps SEGs out of the jobs' inputs (:mod:`orthanc_plugin.intake.studies`). The same SEG seen again is
recorded once (its SOPInstanceUID is the key).

Labels are kept in a SQLite table in the node's data folder (:data:`LABELS_FILE`, mode 0600) rather than in
Orthanc's study metadata: ``GET /lesion-ai/labels`` pages through them and filters by study without reading
every study of Orthanc, and recording one changes nothing that Orthanc's change log or a PACS would see. They
survive restarts; a label whose SEG is later deleted from Orthanc stays listed (``lesion-ai dataset build
--from-node`` reports it as skipped). A malformed SEG (:mod:`orthanc_plugin.intake.label_checks`) is recorded as
refused, with the reason and without its segments, and the build does not use it.

The segments' texts are kept with the grades they state by the convention of
:mod:`lesion_engine.labels.seg_convention` (``ISUP 3``, ``PI-RADS 4``); the headers are read from Orthanc's JSON
(no pydicom, no highdicom inside Orthanc).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydicom.uid import SegmentationStorage

from lesion_engine.labels.seg_convention import node_made, parse_grade
from orthanc_plugin.intake.label_checks import label_problem
from orthanc_plugin.intake.private_table import PrivateTable, check_page
from orthanc_plugin.intake.studies import OrthancSeries, OrthancStudy
from orthanc_plugin.node.orthanc_api import NotFoundError, RestApi, quote_id

logger = logging.getLogger(__name__)

__all__ = ["LABELS_FILE", "SEG_SOP_CLASS_UID", "Label", "LabelStore", "SegmentText", "record_labels"]

#: The labels' table, in the node's data folder.
LABELS_FILE = "labels.sqlite"
SEG_SOP_CLASS_UID = str(SegmentationStorage)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS lesion_ai_labels (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    sop_instance_uid TEXT NOT NULL UNIQUE,
    instance_id TEXT NOT NULL,
    study_id TEXT NOT NULL,
    study_uid TEXT NOT NULL,
    series_id TEXT NOT NULL,
    series_uid TEXT NOT NULL,
    document TEXT NOT NULL,
    recorded_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS lesion_ai_labels_study ON lesion_ai_labels (study_id);
CREATE INDEX IF NOT EXISTS lesion_ai_labels_study_uid ON lesion_ai_labels (study_uid);
CREATE INDEX IF NOT EXISTS lesion_ai_labels_instance ON lesion_ai_labels (instance_id);
"""
_COLUMNS = (
    "id, sop_instance_uid, instance_id, study_id, study_uid, series_id, series_uid, document, recorded_at"
)


@dataclass(frozen=True)
class SegmentText:
    """One segment of a label: what the radiologist wrote and the grades it states.

    Attributes
    ----------
    number : int
        SegmentNumber.
    label, description : str
        SegmentLabel and SegmentDescription.
    algorithm_type : str
        SegmentAlgorithmType (``MANUAL``, ``SEMIAUTOMATIC``, ``AUTOMATIC``).
    isup, pirads : int or None
        The ISUP grade group and PI-RADS category stated (None where the text states none).
    """

    number: int
    label: str
    description: str
    algorithm_type: str
    isup: int | None
    pirads: int | None

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "number": self.number,
            "label": self.label,
            "description": self.description,
            "algorithm_type": self.algorithm_type,
            "isup": self.isup,
            "pirads": self.pirads,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SegmentText:
        """Read :meth:`to_json`'s form."""
        return cls(
            number=int(data["number"]),
            label=str(data.get("label", "")),
            description=str(data.get("description", "")),
            algorithm_type=str(data.get("algorithm_type", "")),
            isup=None if data.get("isup") is None else int(data["isup"]),
            pirads=None if data.get("pirads") is None else int(data["pirads"]),
        )


@dataclass(frozen=True)
class Label:
    """A radiologist's SEG recorded as the label of a study.

    Attributes
    ----------
    study, series, instance : str
        Orthanc IDs of the study, the SEG's series and the SEG instance.
    study_instance_uid, series_instance_uid, sop_instance_uid : str
        Their DICOM UIDs.
    manufacturer, series_description : str
        Who made the SEG (Manufacturer) and its SeriesDescription.
    segments : tuple of SegmentText
        The SEG's segments.
    referenced_series : tuple of str
        SeriesInstanceUIDs of the study's image series the SEG references.
    recorded_at : float
        When the node recorded it (seconds since the epoch).
    id : int or None
        Row number in the store (None before it is stored).
    refused : str or None
        Why the SEG is not used as a label (malformed: :func:`~orthanc_plugin.intake.label_checks.label_problem`);
        None for a label.
    """

    study: str
    study_instance_uid: str
    series: str
    series_instance_uid: str
    instance: str
    sop_instance_uid: str
    manufacturer: str
    series_description: str
    segments: tuple[SegmentText, ...]
    referenced_series: tuple[str, ...]
    recorded_at: float
    id: int | None = None
    refused: str | None = None

    def __post_init__(self) -> None:
        for name in ("study", "study_instance_uid", "series", "series_instance_uid", "instance"):
            if not getattr(self, name):
                raise ValueError(f"a label needs its {name}; it was empty")
        if not self.sop_instance_uid:
            raise ValueError("a label needs the SEG's SOPInstanceUID; it was empty")

    def document(self) -> dict[str, Any]:
        """What is stored besides the indexed columns."""
        return {
            "manufacturer": self.manufacturer,
            "series_description": self.series_description,
            "segments": [s.to_json() for s in self.segments],
            "referenced_series": list(self.referenced_series),
            "refused": self.refused,
        }

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form (``GET /lesion-ai/labels``); Orthanc IDs and UIDs, no patient data."""
        return {
            "id": self.id,
            "study": self.study,
            "study_instance_uid": self.study_instance_uid,
            "series": self.series,
            "series_instance_uid": self.series_instance_uid,
            "instance": self.instance,
            "sop_instance_uid": self.sop_instance_uid,
            **self.document(),
            "recorded_at": datetime.fromtimestamp(self.recorded_at, UTC).isoformat(timespec="seconds"),
        }

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> Label:
        """Read a row of the store (columns in ``_COLUMNS`` order)."""
        number, sop, instance, study, study_uid, series, series_uid, document, recorded_at = row
        data = json.loads(document)
        return cls(
            study=str(study),
            study_instance_uid=str(study_uid),
            series=str(series),
            series_instance_uid=str(series_uid),
            instance=str(instance),
            sop_instance_uid=str(sop),
            manufacturer=str(data.get("manufacturer", "")),
            series_description=str(data.get("series_description", "")),
            segments=tuple(SegmentText.from_json(s) for s in data.get("segments", [])),
            referenced_series=tuple(str(u) for u in data.get("referenced_series", [])),
            recorded_at=float(recorded_at),
            id=int(number),
            refused=str(data["refused"]) if data.get("refused") is not None else None,
        )


class LabelStore(PrivateTable):
    """The labels' table (SQLite, one file of the data folder, 0600; in cluster mode in the cluster database).

    Parameters
    ----------
    path : Path or str
        The database file (created when missing, with its folder), or the cluster database's
        ``postgresql://`` URL.
    """

    def __init__(self, path: Path | str) -> None:
        super().__init__(path, "lesion_ai_labels", _SCHEMA)

    def add(self, label: Label) -> bool:
        """Record a label; False when its SEG (SOPInstanceUID) was recorded before (nothing changes)."""
        with self._lock:
            cursor = self._execute(
                "INSERT OR IGNORE INTO lesion_ai_labels (sop_instance_uid, instance_id, study_id, study_uid, "
                "series_id, series_uid, document, recorded_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    label.sop_instance_uid,
                    label.instance,
                    label.study,
                    label.study_instance_uid,
                    label.series,
                    label.series_instance_uid,
                    json.dumps(label.document(), sort_keys=True),
                    label.recorded_at,
                ),
            )
            return bool(cursor.rowcount == 1)

    def list(self, study: str | None = None, limit: int = 100, offset: int = 0) -> list[Label]:
        """Labels, newest first.

        Parameters
        ----------
        study : str, optional
            Only this study's (Orthanc ID or StudyInstanceUID).
        limit : int
            At most this many (1 to :data:`orthanc_plugin.intake.private_table.MAX_PAGE`).
        offset : int
            Skip this many first (0 or more).

        Raises
        ------
        ValueError
            ``limit`` or ``offset`` out of range.
        """
        check_page(limit, offset)
        where, args = self._where(study)
        with self._lock:
            rows = self._execute(
                f"SELECT {_COLUMNS} FROM lesion_ai_labels{where} ORDER BY id DESC LIMIT ? OFFSET ?",  # noqa: S608 - fixed text
                (*args, limit, offset),
            ).fetchall()
        return [Label.from_row(row) for row in rows]

    def count(self, study: str | None = None) -> int:
        """How many labels (of one study: Orthanc ID or StudyInstanceUID)."""
        where, args = self._where(study)
        with self._lock:
            row = self._execute(f"SELECT COUNT(*) FROM lesion_ai_labels{where}", args).fetchone()  # noqa: S608
        return int(row[0])

    @staticmethod
    def _where(study: str | None) -> tuple[str, tuple[str, ...]]:
        if not study:
            return "", ()
        return " WHERE study_id = ? OR study_uid = ?", (study, study)


# -- finding labels in a study ---------------------------------------------------------------------------
def _processed(study: OrthancStudy) -> bool:
    return any(
        isinstance(entry, dict) and entry.get("status") == "done" for entry in study.record.processed.values()
    )


def _items(value: Any) -> list[dict[str, Any]]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def _segments(tags: dict[str, Any]) -> tuple[SegmentText, ...]:
    out = []
    for item in _items(tags.get("SegmentSequence")):
        label = str(item.get("SegmentLabel", "") or "")
        description = str(item.get("SegmentDescription", "") or "")
        isup, pirads = parse_grade(f"{label} {description}")
        try:
            number = int(str(item.get("SegmentNumber", "0")))
        except ValueError:
            number = 0
        out.append(
            SegmentText(
                number, label, description, str(item.get("SegmentAlgorithmType", "") or ""), isup, pirads
            )
        )
    return tuple(out)


def _label_of(
    api: RestApi,
    study: OrthancStudy,
    series: OrthancSeries,
    instance: str,
    images: dict[str, str],
    manufacturers: tuple[str, ...],
) -> Label | None:
    """The label that one SEG instance is, or None (logged why)."""
    try:
        tags = dict(api.get_json(f"/instances/{quote_id(instance)}/simplified-tags"))
    except NotFoundError:
        return None
    if not str(tags.get("SOPInstanceUID", "") or ""):
        logger.warning(
            "study %s: SEG instance %s has no SOPInstanceUID; not a label", study.study_id, instance
        )
        return None
    why = node_made(tags, manufacturers)
    if why is not None:
        logger.debug("study %s: SEG instance %s is %s, not a label", study.study_id, instance, why)
        return None
    referenced = tuple(
        uid
        for uid in dict.fromkeys(
            str(item.get("SeriesInstanceUID", "")) for item in _items(tags.get("ReferencedSeriesSequence"))
        )
        if uid in images
    )
    if not referenced:
        logger.info(
            "study %s: SEG series %s (%s) references none of the study's image series; not recorded as a label",
            study.study_id,
            series.series_id,
            series.series_instance_uid,
        )
        return None
    try:
        size = api.get_json(f"/instances/{quote_id(instance)}").get("FileSize")
    except NotFoundError:
        return None
    refused = label_problem(tags, int(size) if isinstance(size, int | str) and str(size).isdigit() else None)
    if refused is not None:
        logger.warning(
            "study %s: SEG %s is refused as a label: %s",
            study.study_id,
            tags.get("SOPInstanceUID", ""),
            refused,
        )
    return Label(
        study=study.study_id,
        study_instance_uid=study.study_instance_uid,
        series=series.series_id,
        series_instance_uid=series.series_instance_uid or str(tags.get("SeriesInstanceUID", "")),
        instance=instance,
        sop_instance_uid=str(tags.get("SOPInstanceUID", "") or ""),
        manufacturer=str(tags.get("Manufacturer", "") or ""),
        series_description=str(tags.get("SeriesDescription", "") or ""),
        segments=_segments(tags) if refused is None else (),
        referenced_series=referenced,
        recorded_at=time.time(),
        refused=refused,
    )


def record_labels(
    api: RestApi, store: LabelStore, study: OrthancStudy, manufacturers: tuple[str, ...]
) -> list[Label]:
    """Record the radiologists' SEGs of a study as its labels (see the module docstring).

    Never raises: an error is logged and the study's evaluation goes on (it is called from the node's
    change follower, where a failure must not keep the study's jobs from being queued).

    Parameters
    ----------
    api : RestApi
        Orthanc's REST API.
    store : LabelStore
        Where labels are kept.
    study : OrthancStudy
        The study as evaluated (with its record and series).
    manufacturers : tuple of str
        Manufacturer names of the node's results.

    Returns
    -------
    list of Label
        The labels recorded now (none for a SEG recorded before).
    """
    try:
        return _record(api, store, study, manufacturers)
    except Exception:
        logger.exception("study %s: recording its radiologists' SEGs as labels failed", study.study_id)
        return []


def _record(
    api: RestApi, store: LabelStore, study: OrthancStudy, manufacturers: tuple[str, ...]
) -> list[Label]:
    names = {m.strip().casefold() for m in manufacturers}
    segs = [
        s
        for s in study.all_series
        if s.instances
        and s.sop_class_uid == SEG_SOP_CLASS_UID
        and s.series_id not in study.record.result_series
        and str(s.main.get("Manufacturer", "")).strip().casefold() not in names
    ]
    if not segs:
        return []
    if not _processed(study):
        logger.info(
            "study %s: %d SEG series not recorded as labels: the node has not processed the study "
            "(its record holds no job done); they are looked at again when it has",
            study.study_id,
            len(segs),
        )
        return []
    images = {s.series_instance_uid: s.series_id for s in study.series if s.series_instance_uid}
    recorded: list[Label] = []
    for series in segs:
        for instance in series.instances:
            if store.has_instance(instance):
                continue
            label = _label_of(api, study, series, instance, images, manufacturers)
            if label is None or not store.add(label) or label.refused is not None:
                continue
            recorded.append(label)
            grades = [
                f"ISUP {s.isup}" if s.isup is not None else f"PI-RADS {s.pirads}"
                for s in label.segments
                if s.isup is not None or s.pirads is not None
            ]
            logger.info(
                "study %s (%s): SEG %s recorded as a label (%d segment(s)%s)",
                study.study_id,
                study.study_instance_uid,
                label.sop_instance_uid,
                len(label.segments),
                f": {', '.join(grades)}" if grades else ", none states a grade",
            )
    return recorded
