"""The kinds of DICOM result the engine writes, and the SOP classes each is written with.

This module imports neither torch, numpy nor highdicom: the Orthanc plugin uses it to read routing rules
and to tell result objects apart without loading the engine.

``seg``
    Segmentation (one segment per lesion; none for a negative study).
``sr``
    TID 1500 Comprehensive 3D SR of the lesions; the report of a study that could not be analysed is a
    Comprehensive SR.
``pmap``
    Parametric Map of the localization map.
``sc``
    Secondary Capture images: T2W slices with the lesion outlines burned in, or the failure notice.
``kos``
    Key Object Selection (IHE AI Results): the other result objects and the T2W image at each lesion's
    index slice, for a PACS that only shows key objects.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Iterable, Mapping
from types import MappingProxyType

from lesion_engine.errors import ConfigError

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_OUTPUTS",
    "SOP_CLASS_UIDS",
    "Output",
    "output_of",
    "parse_outputs",
]


class Output(enum.Enum):
    """One kind of DICOM result object; the value is its name in configuration and job payloads."""

    SEG = "seg"
    SR = "sr"
    PMAP = "pmap"
    SC = "sc"
    KOS = "kos"


DEFAULT_OUTPUTS: tuple[Output, ...] = (Output.SEG, Output.SR, Output.KOS)
"""The outputs written when none are asked for."""

# pydicom names these UIDs (pydicom.uid.SegmentationStorage, ...), but importing it brings numpy, and this
# module is read where nothing heavy may load (the node's rules, the CLI): the same values, checked against
# pydicom's names by the tests.
SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
COMPREHENSIVE_3D_SR_STORAGE = "1.2.840.10008.5.1.4.1.1.88.34"
COMPREHENSIVE_SR_STORAGE = "1.2.840.10008.5.1.4.1.1.88.33"
PARAMETRIC_MAP_STORAGE = "1.2.840.10008.5.1.4.1.1.30"
SECONDARY_CAPTURE_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.7"
KEY_OBJECT_SELECTION_DOCUMENT_STORAGE = "1.2.840.10008.5.1.4.1.1.88.59"

SOP_CLASS_UIDS: Mapping[Output, tuple[str, ...]] = MappingProxyType(
    {
        Output.SEG: (SEGMENTATION_STORAGE,),
        # The lesion report is a Comprehensive 3D SR; the report of a study that could not be analysed a
        # Comprehensive SR.
        Output.SR: (COMPREHENSIVE_3D_SR_STORAGE, COMPREHENSIVE_SR_STORAGE),
        Output.PMAP: (PARAMETRIC_MAP_STORAGE,),
        # Overlays and the failure notice are single-frame Secondary Capture images.
        Output.SC: (SECONDARY_CAPTURE_IMAGE_STORAGE,),
        Output.KOS: (KEY_OBJECT_SELECTION_DOCUMENT_STORAGE,),
    }
)
"""The SOP Class UIDs the result writers use for each output (exact UIDs)."""

_OUTPUT_OF_SOP_CLASS: Mapping[str, Output] = MappingProxyType(
    {uid: output for output, uids in SOP_CLASS_UIDS.items() for uid in uids}
)


def parse_outputs(names: Iterable[str]) -> tuple[Output, ...]:
    """Validate output names (``seg``, ``sr``, ``pmap``, ``sc``).

    Parameters
    ----------
    names : iterable of str
        Output names, e.g. from a routing rule or a job payload. A single string is refused (it would
        be read letter by letter).

    Returns
    -------
    tuple of Output
        The outputs, without duplicates, in the order of :class:`Output`.

    Raises
    ------
    ConfigError
        A name is not an output (the message names it and the allowed ones), or ``names`` is a string.
    """
    allowed = ", ".join(output.value for output in Output)
    if isinstance(names, str | bytes):
        raise ConfigError(f"outputs must be a list of names (any of {allowed}), not the string {names!r}")
    chosen: set[Output] = set()
    for name in names:
        try:
            chosen.add(Output(name))
        except ValueError:
            raise ConfigError(f"unknown output {name!r}: use any of {allowed}") from None
    return tuple(output for output in Output if output in chosen)


def output_of(sop_class_uid: str) -> Output | None:
    """The output a result object of this SOP class belongs to.

    Parameters
    ----------
    sop_class_uid : str
        The object's SOPClassUID.

    Returns
    -------
    Output or None
        None when the engine writes no object of that class.
    """
    return _OUTPUT_OF_SOP_CLASS.get(str(sop_class_uid).strip())
