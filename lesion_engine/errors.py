"""Exception hierarchy of the lesion engine.

Every failure that a user can act on has its own class, so that callers (the CLI, the node's workers)
can report it clearly and decide whether retrying makes sense. All of them derive from
:class:`LesionAIError`.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "CheckpointImportError",
    "ConfigError",
    "CorruptInstanceError",
    "DuplicateSlicesError",
    "GeometryError",
    "InconsistentSeriesError",
    "InvalidValueError",
    "LesionAIError",
    "MissingSlicesError",
    "MixedPatientsError",
    "MixedSeriesError",
    "ModelArtifactError",
    "MultipleStudiesError",
    "NoADCError",
    "NoDWIError",
    "NoEligibleSeriesError",
    "NoImagesError",
    "NoT2WError",
    "NonAxialError",
    "NonUniformSpacingError",
    "StudyError",
    "TooFewSlicesError",
    "WrongModalityError",
]


class LesionAIError(Exception):
    """Base class of every error raised on purpose by the lesion engine."""


class ConfigError(LesionAIError, ValueError):
    """A configuration file or value is invalid; the message names the file, the field and the fix."""


class ModelArtifactError(LesionAIError):
    """A model artifact is missing, invalid, changed after export or in a format that is not accepted.

    The message names the file and, for an invalid model card, the field.
    """


class CheckpointImportError(ModelArtifactError):
    """A foreign checkpoint (e.g. a PI-CAI fold) cannot be imported: it is missing, truncated, needs general
    unpickling, or does not fit the architecture. The message names the fold and, where one is at fault,
    the tensor."""


class CorruptInstanceError(LesionAIError):
    """One DICOM instance cannot be read or decoded (truncated file, bad pixel data, not DICOM).

    The loader records these as skipped instances and goes on with the rest of the study.
    """


class StudyError(LesionAIError):
    """The study cannot be used by the engine. The message says why, in words a radiologist can act on.

    Attributes
    ----------
    report : dict or None
        When raised by :func:`lesion_engine.intake.preprocess.prepare_study`: the series table and findings
        gathered before the failure (JSON-ready), so that a user sees what the study held.
    """

    report: dict[str, Any] | None = None


class NoImagesError(StudyError):
    """The input holds no readable image instance at all."""


class MultipleStudiesError(StudyError):
    """The input holds images of more than one study; the engine reads one study at a time."""


class MixedPatientsError(StudyError):
    """The study's images belong to more than one patient (one StudyInstanceUID shared by two patients, or
    instances of another patient filed into the study): the study is not analysed, whatever its series."""


class MixedSeriesError(StudyError):
    """One series' images belong to more than one study or patient (their StudyInstanceUID or PatientID
    differ under one SeriesInstanceUID): the series cannot be trusted as one acquisition, so the study is not
    analysed."""


class InvalidValueError(StudyError):
    """An attribute that places or scales the images holds a value that DICOM does not allow (a DS that is
    not a number, a wrong number of values, a non-finite or non-positive spacing). The message names the
    attribute, the value, the series and an instance."""


class WrongModalityError(StudyError):
    """The study is not an MR study (e.g. CT), so there is nothing for a bpMRI model to read."""


class NoEligibleSeriesError(StudyError):
    """No series qualifies for a role that the model needs."""


class NoT2WError(NoEligibleSeriesError):
    """No usable axial T2-weighted series was found."""


class NoADCError(NoEligibleSeriesError):
    """No usable ADC map was found."""


class NoDWIError(NoEligibleSeriesError):
    """No usable high b-value diffusion image was found, and none could be computed."""


class GeometryError(StudyError):
    """A series' geometry cannot be turned into a regular 3D volume."""


class TooFewSlicesError(GeometryError):
    """A series has fewer slices than a volume needs."""


class MissingSlicesError(GeometryError):
    """Gaps along the slice normal show that slices are missing from a series."""


class DuplicateSlicesError(GeometryError):
    """Two or more slices of a series lie at the same position with different content."""


class NonUniformSpacingError(GeometryError):
    """The distance between neighbouring slices varies more than the tolerance allows."""


class InconsistentSeriesError(GeometryError):
    """Slices of one series differ in Rows/Columns, pixel spacing or orientation."""


class NonAxialError(GeometryError):
    """The T2-weighted series is not axial (within the configured tilt tolerance)."""
