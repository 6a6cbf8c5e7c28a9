"""A fake processor for the node's tests: small SEG and SR objects with deterministic UIDs, no engine.

Behaviour is steered by environment variables (inherited by the workers that the plugin starts):

``LESION_AI_FAKE_DELAY``     seconds to spend "processing" each study (to kill things mid-job)
``LESION_AI_FAKE_LOG``       a file to which each call appends one line (study UID), to count runs
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from orthanc_plugin.processing import (
    ProcessingOutcome,
    ProcessingRequest,
    ProcessorSettings,
    encode,
    headers_of,
)

SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"
MANUFACTURER = "Lesion AI"


def _uid(*parts: str) -> str:
    return str(generate_uid(prefix=None, entropy_srcs=list(parts)))


def _object(reference: Dataset, sop_class: str, modality: str, kind: str, key: str, number: int) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = UID(sop_class)
    study = str(reference.StudyInstanceUID)
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = _uid(study, key, kind, "instance")
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = _uid(study, key, kind, "series")
    for keyword in (
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "StudyDate",
        "StudyTime",
        "AccessionNumber",
        "StudyID",
        "StudyDescription",
    ):
        if keyword in reference:
            setattr(ds, keyword, reference.get(keyword))
    ds.Modality = modality
    ds.Manufacturer = MANUFACTURER
    ds.SeriesNumber = number
    ds.InstanceNumber = 1
    ds.SeriesDescription = f"fake {kind} (test)"
    return ds


class FakeProcessor:
    """Implements :class:`orthanc_plugin.processing.Processor` without the engine."""

    def __init__(self, settings: ProcessorSettings) -> None:
        self.settings = settings
        self.delay = float(os.environ.get("LESION_AI_FAKE_DELAY", "0") or 0)
        self.log = os.environ.get("LESION_AI_FAKE_LOG")

    def _reference(self, instances: Sequence[bytes]) -> Dataset | None:
        headers = headers_of(instances)
        return next((ds for ds in headers if ds.get("Modality") == "MR"), headers[0] if headers else None)

    def __call__(self, instances: Sequence[bytes], request: ProcessingRequest) -> ProcessingOutcome:
        reference = self._reference(instances)
        if reference is None:
            return ProcessingOutcome([], failed=True, reason="no readable instance")
        if self.log:
            with open(self.log, "a", encoding="utf-8") as handle:
                handle.write(f"{reference.StudyInstanceUID} {os.getpid()}\n")
        deadline = time.monotonic() + self.delay
        while time.monotonic() < deadline:
            time.sleep(0.05)
        if reference.get("Modality") != "MR":
            return ProcessingOutcome(
                self.failure(instances, "not an MR study"), failed=True, reason="not an MR study"
            )
        key = request.model
        objects = []
        if "seg" in request.outputs:
            objects.append(encode(_object(reference, SEG_CLASS, "SEG", "seg", key, 9901)))
        if "sr" in request.outputs:
            objects.append(encode(_object(reference, SR_CLASS, "SR", "sr", key, 9902)))
        return ProcessingOutcome(
            objects, model={"name": "fake", "version": "1", "sha256": "0" * 64}, details={"lesions": 1}
        )

    def failure(self, instances: Sequence[bytes], reason: str) -> list[bytes]:
        reference = self._reference(instances)
        if reference is None:
            return []
        return [encode(_object(reference, SR_CLASS, "SR", "failure", reason, 9905))]


def factory(settings: ProcessorSettings) -> FakeProcessor:
    """The ``module:factory`` named in the node's ``Processor`` setting."""
    return FakeProcessor(settings)
