"""A worker's models: the processor of each job's model, and the shadow runs after each job.

A job names the model it was queued for (its identity, part of the job's key): the worker runs that model
(:meth:`ModelRuns.processor_for`), so that a promotion (:mod:`orthanc_plugin.models.registry`) changes the model of
the next jobs, never of a job already queued. After a job's results are stored, each shadow model runs on the
same instances (:meth:`ModelRuns.run_shadows`); its results are kept by :class:`~orthanc_plugin.models.shadow.ShadowStore`
and its agreement report is brought up to date. When radiologists' labels arrive later, an idle worker
recomputes the reports (:meth:`ModelRuns.refresh`).

A shadow run never fails the job: its errors are logged.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from lesion_engine.results.outputs import Output
from orthanc_plugin.models.registry import CONFIGURED, ModelRegistry, RegisteredModel
from orthanc_plugin.models.shadow import Grid, ShadowStore, agreement_report
from orthanc_plugin.node.orthanc_api import quote_id
from orthanc_plugin.worker.processing import (
    ProcessingOutcome,
    ProcessingRequest,
    Processor,
    ProcessorSettings,
    load_processor,
)

logger = logging.getLogger(__name__)

__all__ = ["LabelProvider", "ModelRuns", "NodeLabels"]

#: Processors (loaded models) a worker keeps at most (the active model, shadows, a recent one).
_KEPT_PROCESSORS = 4
#: How often an idle worker looks for new labels, seconds.
REFRESH_S = 30.0
#: What a shadow run writes (kept in the node, not sent).
_SHADOW_OUTPUTS = (Output.SEG, Output.SR)


class _Rest(Protocol):
    def get_json(self, path: str) -> Any: ...

    def get_bytes(self, path: str) -> bytes: ...


class LabelProvider(Protocol):
    """Radiologists' labels: on a study's grid (a :data:`~orthanc_plugin.models.shadow.LabelSource`), and a digest
    that changes when labels are added."""

    def __call__(self, study_instance_uid: str, grid: Grid) -> NDArray[np.int16] | None: ...

    def signature(self) -> str: ...


class NodeLabels:
    """The radiologists' labels the node recorded (``GET /lesion-ai/labels``), put on a study's T2W grid.

    Parameters
    ----------
    client : OrthancRest
        Orthanc's REST API (the node's routes are on it).
    """

    def __init__(self, client: _Rest) -> None:
        self.client = client

    def listing(self, study_instance_uid: str | None = None) -> list[dict[str, Any]]:
        """The recorded labels (all pages), of one study when ``study_instance_uid`` is given."""
        out: list[dict[str, Any]] = []
        offset = 0
        where = f"&study={quote_id(study_instance_uid)}" if study_instance_uid else ""
        while True:
            page = self.client.get_json(f"/lesion-ai/labels?limit=1000&offset={offset}{where}")
            items = page.get("labels", []) if isinstance(page, dict) else []
            out.extend(item for item in items if isinstance(item, dict))
            if not (isinstance(page, dict) and page.get("has_more")) or not items:
                return out
            offset += len(items)

    def signature(self) -> str:
        """A digest of the recorded labels (changes when one is added)."""
        keys = sorted(str(item.get("sop_instance_uid", "")) for item in self.listing())
        return hashlib.sha256(json.dumps(keys).encode()).hexdigest()[:16]

    def __call__(self, study_instance_uid: str, grid: Grid) -> NDArray[np.int16] | None:
        """The study's newest label on ``grid`` (None when it has none)."""
        from lesion_engine.labels.seg_labels import SegLabelOptions, read_seg_labels

        mine = [
            item
            for item in self.listing(study_instance_uid)
            if item.get("study_instance_uid") == study_instance_uid
        ]
        if not mine:
            return None
        # A radiologist's correction is stored as a new SEG: the newest counts.
        newest = max(mine, key=lambda item: str(item.get("recorded_at", "")))
        instance = str(newest.get("instance", ""))
        data = self.client.get_bytes(f"/instances/{quote_id(instance)}/file")
        with tempfile.TemporaryDirectory(prefix="lesion-ai-label-") as tmp:
            path = Path(tmp) / "label.dcm"
            path.write_bytes(data)
            labels = read_seg_labels(path, grid.image(), SegLabelOptions())
        return np.asarray(labels.lesion, dtype=np.int16)


class ModelRuns:
    """A worker's processors per model and its shadow runs (see the module docstring).

    Parameters
    ----------
    registry : ModelRegistry
        The node's models.
    settings : ProcessorSettings
        The processor settings (their ``model`` is replaced by each model's folder).
    spec : str or None
        The ``Processor`` setting (None: the engine).
    default : Processor
        The processor of the configured model.
    labels : LabelProvider or None
        Where the radiologists' labels come from (None: agreement with the active model only).
    """

    def __init__(
        self,
        registry: ModelRegistry,
        settings: ProcessorSettings,
        spec: str | None,
        default: Processor,
        labels: LabelProvider | None = None,
    ) -> None:
        self.registry = registry
        self.settings = settings
        self.spec = spec
        self.default = default
        self.labels = labels
        self._processors: OrderedDict[tuple[str, str], Processor] = OrderedDict()
        self._next_refresh = 0.0
        self._signatures: dict[str, str] = {}

    def _processor(self, model: RegisteredModel) -> Processor:
        if model.name == CONFIGURED or model.path is None:
            return self.default
        key = (model.path, model.identity)
        processor = self._processors.pop(key, None)
        if processor is None:
            processor = load_processor(self.spec, replace(self.settings, model=model.path))
            logger.info("model %s (%s) ready", model.name, model.identity)
        self._processors[key] = processor
        while len(self._processors) > _KEPT_PROCESSORS:
            self._processors.popitem(last=False)
        return processor

    def processor_for(self, identity: str) -> Processor:
        """The processor of the model a job was queued for (the configured model's when no registered model
        has that identity)."""
        model = self.registry.by_identity(identity)
        if model is None:
            if self.registry.names():
                logger.warning("no registered model has the identity %s; the configured model runs", identity)
            return self.default
        return self._processor(model)

    def run_shadows(
        self,
        job_id: int,
        instances: Sequence[bytes],
        request: ProcessingRequest,
        active: ProcessingOutcome,
        active_identity: str,
    ) -> int:
        """Run each shadow model on a job's instances and keep its results; returns how many ran."""
        if active.failed or active.evidence is None:
            return 0
        ran = 0
        for model in self.registry.shadows():
            if model.identity == active_identity or model.path is None:
                continue
            try:
                shadow_request = replace(request, outputs=_SHADOW_OUTPUTS)
                started = time.monotonic()
                outcome = self._processor(model)(instances, shadow_request)
                if outcome.failed or outcome.evidence is None:
                    logger.warning(
                        "job %d: shadow model %s could not analyse: %s", job_id, model.name, outcome.reason
                    )
                    continue
                store = ShadowStore(Path(model.path))
                store.save(
                    outcome.evidence,
                    active.evidence,
                    outcome.to_store(),
                    {
                        "job": job_id,
                        "study": request.study_id,
                        "shadow_model": model.identity,
                        "active_model": active_identity,
                        "seconds": round(time.monotonic() - started, 2),
                    },
                )
                self._report(model, store)
                ran += 1
                logger.info(
                    "job %d: shadow model %s kept %d lesion(s) of study %s",
                    job_id,
                    model.name,
                    len(outcome.evidence.lesions),
                    request.study_id,
                )
            except Exception:
                logger.exception("job %d: shadow run of model %s failed", job_id, model.name)
        return ran

    def _report(self, model: RegisteredModel, store: ShadowStore) -> None:
        signature = self._label_signature()
        agreement_report(store, self.labels, model.identity, signature)
        if signature is not None:
            self._signatures[model.name] = signature

    def _label_signature(self) -> str | None:
        if self.labels is None:
            return None
        try:
            return self.labels.signature()
        except Exception as exc:
            logger.warning("the node's labels cannot be listed: %s", exc)
            return None

    def refresh(self, now: float | None = None) -> int:
        """Recompute the agreement reports whose labels changed (an idle worker calls this; at most every
        :data:`REFRESH_S` seconds). Returns the number of reports recomputed."""
        now = time.monotonic() if now is None else now
        if now < self._next_refresh:
            return 0
        self._next_refresh = now + REFRESH_S
        try:
            shadows = self.registry.shadows()
        except Exception as exc:
            logger.warning("the model registry cannot be read: %s", exc)
            return 0
        if not shadows:
            return 0
        signature = self._label_signature()
        if signature is None:
            return 0
        done = 0
        for model in shadows:
            if model.path is None:
                continue
            store = ShadowStore(Path(model.path))
            known = self._signatures.get(model.name) or (store.report() or {}).get("labels_signature")
            if known == signature or not store.studies():
                self._signatures[model.name] = signature
                continue
            try:
                self._report(model, store)
                done += 1
                logger.info("model %s: agreement recomputed with the radiologists' labels", model.name)
            except Exception:
                logger.exception("model %s: the agreement report cannot be computed", model.name)
        return done
