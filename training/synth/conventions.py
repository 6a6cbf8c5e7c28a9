"""Vendor conventions: names, image types, sequence parameters and where each vendor keeps the b-value.

Four conventions are written:

``siemens``
    Manufacturer ``SIEMENS``; classic DWI keeps the b-value only in the private element (0019,100C) of the
    block ``SIEMENS MR HEADER`` (as text, e.g. ``b"800 "``, either as OB like the archived fixture or as IS)
    and in the Sequence Name (``*ep_b800t``).
``ge``
    Manufacturer ``GE MEDICAL SYSTEMS``; b-value only in (0043,1039) of ``GEMS_PARM_01``: IS with four values,
    the first being ``b + 1000000000``.
``philips``
    Manufacturer ``Philips Medical Systems``; b-value only in (2001,1003) (FL) of ``Philips Imaging DD 001``;
    non-trivial Rescale Slope/Intercept on T2W, DWI, ADC and calculated series.
``standard``
    Manufacturer ``ACME``; b-value only in the standard Diffusion b-value (0018,9087).

Enhanced (multi-frame) objects keep the b-value in the MR Diffusion functional group only, whatever the vendor.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from pydicom.dataset import Dataset

logger = logging.getLogger(__name__)

__all__ = [
    "SERIES_KINDS",
    "SeriesStyle",
    "VendorInfo",
    "add_classic_b_value",
    "series_style",
    "vendor_info",
]

SERIES_KINDS: tuple[str, ...] = (
    "localizer",
    "t2_sag",
    "t2_cor",
    "t2w",
    "dwi",
    "adc",
    "calc",
    "coil_reference",
    "dce",
    "screenshot",
)

SIEMENS_CREATOR = "SIEMENS MR HEADER"
GE_CREATOR = "GEMS_PARM_01"
PHILIPS_CREATOR = "Philips Imaging DD 001"


@dataclass(frozen=True)
class VendorInfo:
    """Study-level facts of a vendor: equipment names and classic pixel depth."""

    manufacturer: str
    model: str
    software: str
    station: str
    field_strength: float
    bits_stored: int
    coil: str
    study_description: str


_VENDORS: dict[str, VendorInfo] = {
    "siemens": VendorInfo(
        "SIEMENS", "Skyra", "syngo MR D11", "MRC25043", 3.0, 12, "BO1,2;SP4,5", "MR prostaat"
    ),
    "ge": VendorInfo(
        "GE MEDICAL SYSTEMS", "DISCOVERY MR750", "DV26.0_R03", "GEMR750", 3.0, 16, "32Ch Body", "MR PROSTATE"
    ),
    "philips": VendorInfo(
        "Philips Medical Systems",
        "Ingenia",
        "5.4.1\\5.4.1.0",
        "PHILIPS-MR1",
        3.0,
        12,
        "DS_TorsoCoil",
        "MRI prostate",
    ),
    "standard": VendorInfo(
        "ACME", "Synthetic MR 3T", "1.0", "ACME-MR", 3.0, 16, "Body array", "MR Prostate bpMRI"
    ),
}


def vendor_info(vendor: str) -> VendorInfo:
    """Equipment facts of ``vendor`` (one of ``siemens``, ``ge``, ``philips``, ``standard``)."""
    try:
        return _VENDORS[vendor]
    except KeyError:
        raise ValueError(f"unknown vendor {vendor!r}: expected one of {', '.join(_VENDORS)}") from None


@dataclass(frozen=True)
class SeriesStyle:
    """How one series of one vendor looks: names, image types and acquisition parameters."""

    description: str
    protocol: str
    sequence_name: str
    scanning_sequence: tuple[str, ...]
    sequence_variant: tuple[str, ...]
    scan_options: tuple[str, ...]
    acquisition_type: str
    image_type: tuple[str, ...]
    enhanced_image_type: tuple[str, str, str, str]
    acquisition_contrast: str
    repetition_time: float
    echo_time: float
    flip_angle: float
    echo_train_length: int
    averages: float
    pixel_bandwidth: float
    rescaled: bool


# kind -> scanning sequence, variant, options, 2D/3D, TR, TE, flip, ETL, averages, bandwidth, contrast, flavour
_ACQ: dict[
    str,
    tuple[
        tuple[str, ...],
        tuple[str, ...],
        tuple[str, ...],
        str,
        float,
        float,
        float,
        int,
        float,
        float,
        str,
        str,
    ],
] = {
    "localizer": (
        ("SE",),
        ("SK", "SP", "OSP"),
        (),
        "2D",
        1800.0,
        92.0,
        150.0,
        128,
        1.0,
        300.0,
        "T2",
        "LOCALIZER",
    ),
    "t2_sag": (("SE",), ("SK", "SP", "OSP"), (), "2D", 5590.0, 101.0, 160.0, 25, 2.0, 200.0, "T2", "T2"),
    "t2_cor": (("SE",), ("SK", "SP", "OSP"), (), "2D", 4320.0, 101.0, 160.0, 25, 2.0, 200.0, "T2", "T2"),
    "t2w": (("SE",), ("SK", "SP", "OSP"), (), "2D", 5660.0, 104.0, 160.0, 25, 4.0, 200.0, "T2", "T2"),
    "dwi": (
        ("EP",),
        ("SK", "SP", "OSP"),
        ("PFP", "FS"),
        "2D",
        2700.0,
        63.0,
        90.0,
        48,
        8.0,
        1500.0,
        "DIFFUSION",
        "DIFFUSION",
    ),
    "adc": (
        ("EP",),
        ("SK", "SP", "OSP"),
        ("PFP", "FS"),
        "2D",
        2700.0,
        63.0,
        90.0,
        48,
        8.0,
        1500.0,
        "DIFFUSION",
        "DIFFUSION",
    ),
    "calc": (
        ("EP",),
        ("SK", "SP", "OSP"),
        ("PFP", "FS"),
        "2D",
        2700.0,
        63.0,
        90.0,
        48,
        8.0,
        1500.0,
        "DIFFUSION",
        "DIFFUSION",
    ),
    "coil_reference": (
        ("GR",),
        ("SK", "SP", "OSP"),
        (),
        "3D",
        800.0,
        1.53,
        5.0,
        1,
        1.0,
        490.0,
        "PROTON_DENSITY",
        "PROTON_DENSITY",
    ),
    "dce": (("GR",), ("SK", "SP", "SS"), ("FS",), "3D", 4.1, 1.5, 12.0, 1, 1.0, 400.0, "T1", "PERFUSION"),
    "screenshot": ((), (), (), "", 0.0, 0.0, 0.0, 0, 0.0, 0.0, "UNKNOWN", "NONE"),
}


def _bstr(values: tuple[int, ...], sep: str) -> str:
    return sep.join(str(b) for b in values)


def _siemens(
    kind: str, b: tuple[int, ...], calc_b: tuple[int, ...], second: bool
) -> tuple[str, str, tuple[str, ...]]:
    dwi = "ep2d_diff_tra_DYNDIST_MIX" if b == (50, 400, 800) else f"ep2d_diff_tra_b{_bstr(b, '_')}"
    loc_it = ("ORIGINAL", "PRIMARY", "M", "NORM", "DIS2D")
    table: dict[str, tuple[str, str, tuple[str, ...]]] = {
        "localizer": ("t2_loc sag" if second else "t2_localizer", "*h2d1_205", loc_it),
        "t2_sag": ("t2_tse_sag", "*tse2d1_25", loc_it),
        "t2_cor": ("t2_tse_cor", "*tse2d1_25", loc_it),
        "t2w": ("t2_tse_tra", "*tse2d1_25", loc_it),
        "dwi": (dwi, "", ("DERIVED", "PRIMARY", "DIFFUSION", "TRACEW", "DIS2D")),
        "adc": (f"{dwi}_ADC", f"*ep_b{b[0]}_{b[-1]}", ("DERIVED", "PRIMARY", "DIFFUSION", "ADC", "DIS2D")),
        "calc": (
            f"{dwi}CALC_BVAL" if dwi.endswith("MIX") else f"{dwi}_CALC_BVAL",
            f"*ep_b{b[0]}_{b[-1]}",
            ("DERIVED", "PRIMARY", "DIFFUSION", "TRACEW", "DIS2D"),
        ),
        "coil_reference": (
            "tfl_3d PD ref_tra_1.5x1.5_t3",
            "*tfl3d1_16",
            ("ORIGINAL", "PRIMARY", "M", "DIS2D"),
        ),
        "dce": ("t1_vibe_fs_tra_dyn", "*fl3d1", loc_it),
        "screenshot": ("Screenshot", "", ("DERIVED", "SECONDARY")),
    }
    return table[kind]


def _ge(
    kind: str, b: tuple[int, ...], calc_b: tuple[int, ...], second: bool
) -> tuple[str, str, tuple[str, ...]]:
    other = ("ORIGINAL", "PRIMARY", "OTHER")
    table: dict[str, tuple[str, str, tuple[str, ...]]] = {
        "localizer": (
            "Sag Loc" if second else "3-Plane Loc SSFSE",
            "ssfse",
            ("ORIGINAL", "PRIMARY", "LOCALIZER"),
        ),
        "t2_sag": ("Sag T2 FSE", "fse-xl", other),
        "t2_cor": ("Cor T2 FSE", "fse-xl", other),
        "t2w": ("Ax T2 FRFSE", "frfse", other),
        "dwi": (f"Ax DWI b{_bstr(b, '-')}", "epi2", other),
        "adc": ("Apparent Diffusion Coefficient (mm2/s)", "epi2", other),
        "calc": (f"CALC DWI b{_bstr(calc_b, '-')}", "epi2", ("DERIVED", "PRIMARY", "OTHER")),
        "coil_reference": ("ASSET Calibration", "fgre3d", other),
        "dce": ("Ax DCE DISCO", "fgre3d", other),
        "screenshot": ("Screen Save", "", ("DERIVED", "SECONDARY")),
    }
    return table[kind]


def _philips(
    kind: str, b: tuple[int, ...], calc_b: tuple[int, ...], second: bool
) -> tuple[str, str, tuple[str, ...]]:
    se = ("ORIGINAL", "PRIMARY", "M_SE", "M", "SE")
    ffe = ("ORIGINAL", "PRIMARY", "M_FFE", "M", "FFE")
    table: dict[str, tuple[str, str, tuple[str, ...]]] = {
        "localizer": ("Survey_sag" if second else "Survey", "SURVEY", ffe),
        "t2_sag": ("T2W_TSE_sag", "TSE", se),
        "t2_cor": ("T2W_TSE_cor", "TSE", se),
        "t2w": ("T2W_TSE_ax", "TSE", se),
        "dwi": (f"DWI_b{_bstr(b, '_')}", "DwiSE", se),
        "adc": ("dADC", "DwiSE", ("DERIVED", "PRIMARY", "DIFFUSION", "ADC")),
        "calc": (f"DWI_b{_bstr(calc_b, '_')}_CALC", "DwiSE", ("DERIVED", "PRIMARY", "M_SE", "M", "SE")),
        "coil_reference": ("SenseRefScan", "FFE", ffe),
        "dce": ("DCE_THRIVE_dyn", "T1FFE", ffe),
        "screenshot": ("Secondary Capture", "", ("DERIVED", "SECONDARY")),
    }
    return table[kind]


def _standard(
    kind: str, b: tuple[int, ...], calc_b: tuple[int, ...], second: bool
) -> tuple[str, str, tuple[str, ...]]:
    m = ("ORIGINAL", "PRIMARY", "M")
    table: dict[str, tuple[str, str, tuple[str, ...]]] = {
        "localizer": (
            "Localizer sag" if second else "Localizer",
            "LOC",
            ("ORIGINAL", "PRIMARY", "LOCALIZER"),
        ),
        "t2_sag": ("T2 sagittal", "TSE", m),
        "t2_cor": ("T2 coronal", "TSE", m),
        "t2w": ("T2 axial", "TSE", m),
        "dwi": (f"DWI b{_bstr(b, ' ')}", "EPI_DWI", ("ORIGINAL", "PRIMARY", "DIFFUSION")),
        "adc": ("ADC", "EPI_DWI", ("DERIVED", "PRIMARY", "DIFFUSION", "ADC")),
        "calc": (f"DWI CALC b{_bstr(calc_b, ' ')}", "EPI_DWI", ("DERIVED", "PRIMARY", "DIFFUSION")),
        "coil_reference": ("Coil sensitivity reference", "GRE3D", m),
        "dce": ("DCE T1 axial", "GRE3D", m),
        "screenshot": ("Screenshot", "", ("DERIVED", "SECONDARY")),
    }
    return table[kind]


_NAMERS = {"siemens": _siemens, "ge": _ge, "philips": _philips, "standard": _standard}


def series_style(
    vendor: str,
    kind: str,
    b_values: tuple[int, ...] = (),
    calc_b_values: tuple[int, ...] = (),
    second_localizer: bool = False,
) -> SeriesStyle:
    """The look of series ``kind`` (see ``SERIES_KINDS``) for ``vendor``.

    Parameters
    ----------
    vendor
        ``siemens``, ``ge``, ``philips`` or ``standard``.
    kind
        Series kind.
    b_values
        b-values of the study's DWI series (they appear in names).
    calc_b_values
        b-values of the calculated series.
    second_localizer
        The style of a second, sagittal-only localizer.
    """
    if kind not in SERIES_KINDS:
        raise ValueError(f"unknown series kind {kind!r}: expected one of {', '.join(SERIES_KINDS)}")
    try:
        namer = _NAMERS[vendor]
    except KeyError:
        raise ValueError(f"unknown vendor {vendor!r}: expected one of {', '.join(_NAMERS)}") from None
    description, seq, image_type = namer(kind, b_values, calc_b_values, second_localizer)
    scan, variant, options, acq, tr, te, flip, etl, nav, bw, contrast, flavour = _ACQ[kind]
    first = "DERIVED" if kind in ("adc", "calc") else "ORIGINAL"
    pixel_contrast = "ADC" if kind == "adc" else "NONE"
    if vendor == "siemens" and kind == "dwi":
        seq = f"*ep_b{b_values[0]}t" if b_values else "*ep_b0t"
    return SeriesStyle(
        description=description,
        protocol=re.split(r"_?CALC|_ADC$", description)[0].strip(" _") or description,
        sequence_name=seq,
        scanning_sequence=scan,
        sequence_variant=variant,
        scan_options=options,
        acquisition_type=acq,
        image_type=image_type,
        enhanced_image_type=(first, "PRIMARY", flavour, pixel_contrast),
        acquisition_contrast=contrast,
        repetition_time=tr,
        echo_time=te,
        flip_angle=flip,
        echo_train_length=etl,
        averages=nav,
        pixel_bandwidth=bw,
        rescaled=vendor == "philips" and kind in ("t2w", "dwi", "adc", "calc"),
    )


def siemens_sequence_name(b_value: int) -> str:
    """Siemens Sequence Name of a DWI trace image at ``b_value`` (e.g. ``*ep_b800t``)."""
    return f"*ep_b{b_value}t"


def add_classic_b_value(ds: Dataset, vendor: str, b_value: float, siemens_as_ob: bool = True) -> None:
    """Write ``b_value`` where ``vendor`` keeps it in a classic (single-frame) MR object.

    Parameters
    ----------
    ds
        The dataset of one image.
    vendor
        ``siemens``, ``ge``, ``philips`` or ``standard``.
    b_value
        The b-value in s/mm2.
    siemens_as_ob
        For Siemens, write (0019,100C) as OB bytes (as archived data often has it) rather than as IS.
    """
    b = round(b_value)
    if vendor == "siemens":
        block = ds.private_block(0x0019, SIEMENS_CREATOR, create=True)
        text = str(b)
        if siemens_as_ob:
            raw = text.encode("ascii")
            block.add_new(0x0C, "OB", raw + b" " if len(raw) % 2 else raw)
        else:
            block.add_new(0x0C, "IS", text)
        block.add_new(0x0D, "OB" if siemens_as_ob else "CS", b"ISOTROPIC " if siemens_as_ob else "ISOTROPIC")
    elif vendor == "ge":
        block = ds.private_block(0x0043, GE_CREATOR, create=True)
        block.add_new(0x39, "IS", [str(1_000_000_000 + b), "8", "0", "0"])
    elif vendor == "philips":
        block = ds.private_block(0x2001, PHILIPS_CREATOR, create=True)
        block.add_new(0x03, "FL", float(b))
    elif vendor == "standard":
        ds.DiffusionBValue = float(b)
        ds.DiffusionDirectionality = "ISOTROPIC" if b > 0 else "NONE"
    else:
        raise ValueError(f"unknown vendor {vendor!r}")
