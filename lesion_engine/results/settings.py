"""Settings of the DICOM result writers: which objects to write and how the product names itself.

:class:`ResultSettings` is frozen and validated on construction, so a writer never meets a value that
would make an invalid DICOM object (too long for its value representation, a series number used twice,
a malformed UID root).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from lesion_engine import __version__
from lesion_engine.errors import ConfigError

logger = logging.getLogger(__name__)

__all__ = ["PRODUCT_NAME", "ResultSettings"]

#: The product's name: the default Manufacturer of every object written, and how the node and training
#: recognise the node's own results (:attr:`ResultSettings.manufacturer` is the configured one).
PRODUCT_NAME = "Lesion AI"

_UID_ROOT = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*\.$")
_LO_MAX = 64  # DICOM LO (Long String)
_SH_MAX = 16  # DICOM SH (Short String)


def _check_text(name: str, value: object, limit: int, *, empty_ok: bool = False) -> None:
    if not isinstance(value, str):
        raise ConfigError(f"result settings: {name} must be a string, got {type(value).__name__}")
    if not value and not empty_ok:
        raise ConfigError(f"result settings: {name} must not be empty")
    if len(value) > limit:
        raise ConfigError(f"result settings: {name} is {len(value)} characters long; at most {limit} fit")
    if "\\" in value or any(ord(c) < 32 for c in value):
        raise ConfigError(f"result settings: {name} must not contain a backslash or control characters")


@dataclass(frozen=True)
class ResultSettings:
    """What the result writers produce, and the names they put into every object.

    Attributes
    ----------
    write_seg : bool
        Write a DICOM Segmentation of the lesions (when there is at least one lesion).
    write_pmap : bool
        Also write a Parametric Map of the localization map (float, on the T2W grid).
    write_sc : bool
        Also write a Secondary Capture series: T2W slices with the lesion outlines burned in.
    sc_all_slices : bool
        With ``write_sc``: one image per T2W slice (True) or only for slices that hold a lesion (False).
    write_failure_sc : bool
        For a failed study, also write a Secondary Capture image with the reason burned in.
    write_summary : bool
        With every SR, write the result summary: one Secondary Capture image that any viewer shows, with
        the verdict ("No lesion found", or the lesions), the prostate volume, the model and the research-use
        notice (:mod:`lesion_engine.results.summary`).
    manufacturer, manufacturer_model_name, software_versions, device_serial_number : str
        Equipment attributes of every object written (the product, not the model).
    institution_name : str or None
        InstitutionName of the node, when set.
    algorithm_name, algorithm_version : str or None
        Algorithm identification in SEG and SR; None: the model's name and version from the result.
    algorithm_source : str
        Who made the algorithm (AlgorithmSource in the SEG).
    device_observer_name : str
        Name of the device observer in the SR.
    device_observer_uid : str or None
        Device Observer UID in the SR; None: derived from manufacturer and model name (stable).
    uid_root : str or None
        Root (ending in ``.``) of every UID written; None: ``2.25.`` UIDs from name-based UUIDs.
    uid_context : str
        Extra text mixed into every derived UID, e.g. a digest of the engine's own settings.
    seg_series_number, sr_series_number, pmap_series_number, sc_series_number : int
        SeriesNumber of each result series.
    failure_series_number, failure_sc_series_number : int
        SeriesNumber of the failure report and of its Secondary Capture image.
    seg_series_description, sr_series_description, pmap_series_description : str
        SeriesDescription of each result series.
    sc_series_description, failure_series_description, failure_sc_series_description : str
        SeriesDescription of the overlay series and of the failure objects.
    write_kos : bool
        Write a Key Object Selection of the result set (:mod:`lesion_engine.results.structured.kos`): the result
        objects and the T2W image at each lesion's index slice.
    kos_series_number : int
        SeriesNumber of the Key Object Selection.
    kos_series_description : str
        SeriesDescription of the Key Object Selection.
    summary_series_number : int
        SeriesNumber of the summary image.
    summary_series_description : str
        SeriesDescription of the summary image; ``{result}`` is replaced by the verdict ("no lesion found",
        "2 lesions found"), and the whole cut to 64 characters.
    caption : str
        Caption burned into every Secondary Capture image.
    sr_outline : str
        How the SR outlines a lesion on its index slice: ``"scoord"`` (on the T2W image, pixel
        coordinates) or ``"scoord3d"`` (patient coordinates).
    """

    write_seg: bool = True
    write_pmap: bool = False
    write_sc: bool = False
    sc_all_slices: bool = False
    write_failure_sc: bool = True
    write_summary: bool = True
    write_kos: bool = True
    manufacturer: str = PRODUCT_NAME
    manufacturer_model_name: str = f"{PRODUCT_NAME} prostate bpMRI"
    software_versions: str = __version__
    device_serial_number: str = "1"
    institution_name: str | None = None
    algorithm_name: str | None = None
    algorithm_version: str | None = None
    algorithm_source: str = PRODUCT_NAME
    device_observer_name: str = PRODUCT_NAME
    device_observer_uid: str | None = None
    uid_root: str | None = None
    uid_context: str = ""
    seg_series_number: int = 9901
    sr_series_number: int = 9902
    pmap_series_number: int = 9903
    sc_series_number: int = 9904
    failure_series_number: int = 9905
    failure_sc_series_number: int = 9906
    seg_series_description: str = "AI lesions SEG (research)"
    sr_series_description: str = "AI lesion report (research)"
    pmap_series_description: str = "AI lesion likelihood map (research)"
    sc_series_description: str = "AI lesion overlay (research, not for diagnosis)"
    failure_series_description: str = "AI analysis FAILED (research)"
    failure_sc_series_description: str = "AI analysis FAILED - reason (research)"
    summary_series_number: int = 9907
    kos_series_number: int = 9908
    kos_series_description: str = "AI key objects (research)"
    summary_series_description: str = "AI summary: {result} (research)"
    caption: str = "AI result for review - not a diagnosis. Research use only."
    sr_outline: str = "scoord"

    def __post_init__(self) -> None:
        for name in (
            "write_seg",
            "write_pmap",
            "write_sc",
            "sc_all_slices",
            "write_failure_sc",
            "write_summary",
            "write_kos",
        ):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"result settings: {name} must be true or false")
        for name in (
            "manufacturer",
            "manufacturer_model_name",
            "software_versions",
            "device_serial_number",
            "algorithm_source",
            "device_observer_name",
            "seg_series_description",
            "sr_series_description",
            "pmap_series_description",
            "sc_series_description",
            "failure_series_description",
            "failure_sc_series_description",
            "kos_series_description",
        ):
            _check_text(name, getattr(self, name), _LO_MAX)
        # The summary's description is cut to 64 characters once its {result} is filled in.
        _check_text("summary_series_description", self.summary_series_description, 200)
        for name in ("institution_name", "algorithm_name", "algorithm_version"):
            if getattr(self, name) is not None:
                _check_text(name, getattr(self, name), _LO_MAX)
        _check_text("uid_context", self.uid_context, 1024, empty_ok=True)
        _check_text("caption", self.caption, 200)
        if self.sr_outline not in ("scoord", "scoord3d"):
            raise ConfigError(
                f"result settings: sr_outline must be 'scoord' or 'scoord3d', not {self.sr_outline!r}"
            )
        numbers: dict[int, str] = {}
        for f in fields(self):
            if f.name.endswith("_series_number"):
                value = getattr(self, f.name)
                if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 2**31 - 1:
                    raise ConfigError(f"result settings: {f.name} must be an integer from 1 to 2147483647")
                if value in numbers:
                    raise ConfigError(
                        f"result settings: {f.name} and {numbers[value]} are both {value}; "
                        "each result series needs its own number"
                    )
                numbers[value] = f.name
        if self.uid_root is not None:
            if not isinstance(self.uid_root, str) or not _UID_ROOT.match(self.uid_root):
                raise ConfigError(
                    f"result settings: uid_root {self.uid_root!r} is not a UID root such as '1.2.3.4.' "
                    "(digits and dots, no leading zeros, ending in a dot)"
                )
            if len(self.uid_root) > 40:
                raise ConfigError(
                    "result settings: uid_root is longer than 40 characters; derived UIDs would not fit"
                )
        if self.device_observer_uid is not None and (
            not isinstance(self.device_observer_uid, str)
            or not _UID_ROOT.match(self.device_observer_uid + ".")
            or len(self.device_observer_uid) > 64
        ):
            raise ConfigError(
                f"result settings: device_observer_uid {self.device_observer_uid!r} is not a UID"
            )

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> ResultSettings:
        """Build settings from a mapping (e.g. a YAML section), rejecting unknown keys.

        Parameters
        ----------
        values : Mapping
            Field names to values; missing fields keep their defaults.

        Returns
        -------
        ResultSettings

        Raises
        ------
        ConfigError
            An unknown key or an invalid value.
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(
                f"result settings: unknown key(s) {', '.join(unknown)}; known keys: {', '.join(sorted(known))}"
            )
        return cls(**dict(values))

    def to_mapping(self) -> dict[str, Any]:
        """The fields that differ from their defaults: the mapping :meth:`from_mapping` reads back into these
        settings (JSON-ready, as a configuration writes them).

        Returns
        -------
        dict
            Field name -> value; empty for the default settings.
        """
        defaults = ResultSettings()
        return {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if getattr(self, f.name) != getattr(defaults, f.name)
        }

    def fingerprint(self) -> str:
        """A short digest of the settings that shape the objects' content, mixed into the derived UIDs.

        The switches that only add or drop optional objects (``write_*``, ``sc_all_slices``) are left out,
        so that turning on an extra output does not give the other objects new UIDs; so are the summary
        image's and the Key Object Selection's own settings (``summary_*``, ``kos_*``), which only their
        UIDs depend on (:mod:`lesion_engine.results.summary`, :mod:`lesion_engine.results.structured.kos`).
        """
        content = {
            k: v
            for k, v in asdict(self).items()
            if not k.startswith(("write_", "summary_", "kos_")) and k != "sc_all_slices"
        }
        text = json.dumps(content, sort_keys=True)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]
