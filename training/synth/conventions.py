"""Vendor conventions: names, image types, sequence parameters and where each vendor keeps the b-value.

Four conventions are written (classic objects: one MR image per slice):

``siemens``
    Manufacturer ``SIEMENS``. Diffusion images keep the b-value only in the private element (0019,xx0C) of
    the block ``SIEMENS MR HEADER`` (as text, e.g. ``b"800 "``, either as OB like the archived fixture or as
    IS), with (0019,xx0D) ``ISOTROPIC`` (``NONE`` at b = 0), and in the Sequence Name (``*ep_b800t``). ADC
    maps carry the largest fitted b-value there too. Series that are not diffusion-weighted carry no
    b-value.
``ge``
    Manufacturer ``GE MEDICAL SYSTEMS``. (0043,xx39) of ``GEMS_PARM_01`` (IS, four values) on *every* MR
    series: first value 0 (``0\\0\\0\\0``) outside diffusion; on multi-b DWI, calculated and ADC series
    ``b + 10^9`` (``1000000800\\8\\0\\0``; the bias is added to b = 0 too, ``1000000000``), as GE writes
    it for multi-b and synthetic b-value scans.
``philips``
    Manufacturer ``Philips Medical Systems``. Diffusion images keep the b-value in (2001,xx03) (FL) of
    ``Philips Imaging DD 001``, with (2001,xx04) ``I`` on isotropic images with b > 0; *every* series that
    is not diffusion-weighted (localizers, T2, DCE, coil reference) carries DiffusionBValue (0018,9087) = 0,
    DiffusionDirectionality (0018,9075) = ``NONE`` and (2001,xx03) = 0, as Philips scanners write them.
    Non-trivial Rescale Slope/Intercept on T2W and diffusion series.
``standard``
    Manufacturer ``ACME`` (a generic, Canon-like convention). The b-value only in the standard
    DiffusionBValue (0018,9087) with DiffusionDirectionality ``ISOTROPIC``, and only on images with b > 0:
    the b = 0 images of a diffusion series carry no b-value tag at all (dcm2niix reads them as b = 0).

A multi-direction (DTI) scan, written as one series with its b = 0 images, is marked on its b > 0 images by
DiffusionDirectionality (0018,9075) = ``DIRECTIONAL`` and DiffusionGradientOrientation (0018,9089) for every
vendor, besides the vendor's own elements: Siemens (0019,xx0D) ``DIRECTIONAL`` and (0019,xx0E) (the
gradient direction) and Sequence Names ``*ep_b0`` / ``*ep_b1000#3``; GE without the 10^9 bias (DTI scans have
none: ``1000\\8\\0\\0``, and ``0\\8\\0\\0`` at b = 0), with DiffusionBValue (0018,9087) on the b > 0
images, the gradient in (0019,xxBB/xxBC/xxBD) of ``GEMS_ACQU_01`` and the image kind in (0043,xx30) (14 b = 0,
16 directional, 19 trace, 18 FA); Philips (2001,xx04) ``O``. Its TRACEW series holds isotropic images at its
b-value; its FA map carries no b-value (GE: first value 0).

Enhanced (multi-frame) objects, every vendor: each frame's b-value is in the MR Diffusion functional group
(MRDiffusionSequence: ``NONE`` at b = 0, ``ISOTROPIC`` on trace images, ``DIRECTIONAL`` with a
DiffusionGradientDirectionSequence on DTI images, Siemens ``BMATRIX`` with a DiffusionBMatrixSequence as
syngo MR XA writes it). Series that are not diffusion-weighted carry an MR Diffusion group with b = 0 and
``NONE`` too: per frame (Siemens, Philips) or shared (GE, standard). Philips also keeps each frame's b-value
in its private (2001,xx03) inside the frame's per-frame functional group item. ADC and FA maps carry no
diffusion group. The writing itself is in :mod:`training.synth.dicom.diffusion_tags`.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

logger = logging.getLogger(__name__)

__all__ = [
    "DIFFUSION_KINDS",
    "GE_CREATOR",
    "NON_DIFFUSION_KINDS",
    "PHILIPS_CREATOR",
    "SERIES_KINDS",
    "SIEMENS_CREATOR",
    "SeriesStyle",
    "VendorInfo",
    "series_style",
    "siemens_sequence_name",
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
    "dti",
    "trace",
    "fa",
    "coil_reference",
    "dce",
    "screenshot",
)
NON_DIFFUSION_KINDS: tuple[str, ...] = ("localizer", "t2_sag", "t2_cor", "t2w", "coil_reference", "dce")
"""MR series that are not diffusion-weighted (some vendors still write b = 0 on them)."""
DIFFUSION_KINDS: tuple[str, ...] = ("dwi", "calc", "dti", "trace")
"""Series of diffusion-weighted images, each image with its b-value: DWI, calculated, DTI and its TRACEW."""

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
_ACQ["dti"] = (
    ("EP",),
    ("SK", "SP", "OSP"),
    ("PFP", "FS"),
    "2D",
    3600.0,
    78.0,
    90.0,
    48,
    1.0,
    1500.0,
    "DIFFUSION",
    "DIFFUSION",
)
_ACQ["trace"] = _ACQ["dti"]
_ACQ["fa"] = _ACQ["dti"]


@dataclass(frozen=True)
class _Names:
    """What a series name may mention: b-values, the acquisition it belongs to, its number of directions."""

    b: tuple[int, ...]
    calc_b: tuple[int, ...]
    second: bool
    variant: str
    n_directions: int


def _bstr(values: tuple[int, ...], sep: str) -> str:
    return sep.join(str(b) for b in values)


def _siemens(kind: str, n: _Names) -> tuple[str, str, tuple[str, ...]]:
    b = n.b
    if n.variant == "dti":
        dwi = f"ep2d_diff_dti_{n.n_directions}dir_tra"
    elif n.variant == "mddw":
        dwi = f"ep2d_diff_mddw_{n.n_directions}dir_b{_bstr(b, '_')}_tra"
    elif b == (50, 400, 800) and n.variant != "high_b":
        dwi = "ep2d_diff_tra_DYNDIST_MIX"
    else:
        dwi = f"ep2d_diff_tra_b{_bstr(b, '_')}"
    loc_it = ("ORIGINAL", "PRIMARY", "M", "NORM", "DIS2D")
    fitted = f"*ep_b{b[0]}_{b[-1]}" if b else ""
    table: dict[str, tuple[str, str, tuple[str, ...]]] = {
        "localizer": ("t2_loc sag" if n.second else "t2_localizer", "*h2d1_205", loc_it),
        "t2_sag": ("t2_tse_sag", "*tse2d1_25", loc_it),
        "t2_cor": ("t2_tse_cor", "*tse2d1_25", loc_it),
        "t2w": ("t2_tse_tra", "*tse2d1_25", loc_it),
        "dwi": (
            f"{dwi}_TRACEW" if n.variant == "mddw" else dwi,
            "",
            ("DERIVED", "PRIMARY", "DIFFUSION", "TRACEW", "DIS2D"),
        ),
        "adc": (f"{dwi}_ADC", fitted, ("DERIVED", "PRIMARY", "DIFFUSION", "ADC", "DIS2D")),
        "calc": (
            f"{dwi}CALC_BVAL" if dwi.endswith("MIX") else f"{dwi}_CALC_BVAL",
            fitted,
            ("DERIVED", "PRIMARY", "DIFFUSION", "TRACEW", "DIS2D"),
        ),
        "dti": (dwi, "", ("ORIGINAL", "PRIMARY", "DIFFUSION", "NONE", "DIS2D")),
        "trace": (f"{dwi}_TRACEW", fitted, ("DERIVED", "PRIMARY", "DIFFUSION", "TRACEW", "DIS2D")),
        "fa": (f"{dwi}_FA", fitted, ("DERIVED", "PRIMARY", "DIFFUSION", "FA", "DIS2D")),
        "coil_reference": (
            "tfl_3d PD ref_tra_1.5x1.5_t3",
            "*tfl3d1_16",
            ("ORIGINAL", "PRIMARY", "M", "DIS2D"),
        ),
        "dce": ("t1_vibe_fs_tra_dyn", "*fl3d1", loc_it),
        "screenshot": ("Screenshot", "", ("DERIVED", "SECONDARY")),
    }
    return table[kind]


def _ge(kind: str, n: _Names) -> tuple[str, str, tuple[str, ...]]:
    other = ("ORIGINAL", "PRIMARY", "OTHER")
    processed = ("DERIVED", "SECONDARY", "PROCESSED")
    dti = f"Ax DTI {n.n_directions} dir b{n.b[-1]}" if n.b else "Ax DTI"
    table: dict[str, tuple[str, str, tuple[str, ...]]] = {
        "localizer": (
            "Sag Loc" if n.second else "3-Plane Loc SSFSE",
            "ssfse",
            ("ORIGINAL", "PRIMARY", "LOCALIZER"),
        ),
        "t2_sag": ("Sag T2 FSE", "fse-xl", other),
        "t2_cor": ("Cor T2 FSE", "fse-xl", other),
        "t2w": ("Ax T2 FRFSE", "frfse", other),
        "dwi": (f"Ax DWI b{_bstr(n.b, '-')}", "epi2", other),
        "adc": ("Apparent Diffusion Coefficient (mm2/s)", "epi2", other),
        "calc": (f"CALC DWI b{_bstr(n.calc_b, '-')}", "epi2", ("DERIVED", "PRIMARY", "OTHER")),
        "dti": (dti, "epi2", other),
        "trace": (f"Isotropic {dti}", "epi2", processed),
        "fa": ("Fractional Aniso. (FA)", "epi2", processed),
        "coil_reference": ("ASSET Calibration", "fgre3d", other),
        "dce": ("Ax DCE DISCO", "fgre3d", other),
        "screenshot": ("Screen Save", "", ("DERIVED", "SECONDARY")),
    }
    return table[kind]


def _philips(kind: str, n: _Names) -> tuple[str, str, tuple[str, ...]]:
    se = ("ORIGINAL", "PRIMARY", "M_SE", "M", "SE")
    ffe = ("ORIGINAL", "PRIMARY", "M_FFE", "M", "FFE")
    derived_se = ("DERIVED", "PRIMARY", "M_SE", "M", "SE")
    dti = f"DTI_{n.n_directions}dir_b{n.b[-1]}" if n.b else "DTI"
    table: dict[str, tuple[str, str, tuple[str, ...]]] = {
        "localizer": ("Survey_sag" if n.second else "Survey", "SURVEY", ffe),
        "t2_sag": ("T2W_TSE_sag", "TSE", se),
        "t2_cor": ("T2W_TSE_cor", "TSE", se),
        "t2w": ("T2W_TSE_ax", "TSE", se),
        "dwi": (f"DWI_b{_bstr(n.b, '_')}", "DwiSE", se),
        "adc": ("dADC", "DwiSE", ("DERIVED", "PRIMARY", "DIFFUSION", "ADC")),
        "calc": (f"DWI_b{_bstr(n.calc_b, '_')}_CALC", "DwiSE", derived_se),
        "dti": (dti, "DwiSE", se),
        "trace": (f"iso{dti}", "DwiSE", derived_se),
        "fa": (f"FA_{dti}", "DwiSE", ("DERIVED", "PRIMARY", "DIFFUSION", "FA")),
        "coil_reference": ("SenseRefScan", "FFE", ffe),
        "dce": ("DCE_THRIVE_dyn", "T1FFE", ffe),
        "screenshot": ("Secondary Capture", "", ("DERIVED", "SECONDARY")),
    }
    return table[kind]


def _standard(kind: str, n: _Names) -> tuple[str, str, tuple[str, ...]]:
    m = ("ORIGINAL", "PRIMARY", "M")
    dti = f"DTI {n.n_directions} directions b{n.b[-1]}" if n.b else "DTI"
    adc = {"high_b": f"ADC b{n.b[-1]}" if n.b else "ADC", "dti": f"{dti} ADC"}.get(n.variant, "ADC")
    table: dict[str, tuple[str, str, tuple[str, ...]]] = {
        "localizer": (
            "Localizer sag" if n.second else "Localizer",
            "LOC",
            ("ORIGINAL", "PRIMARY", "LOCALIZER"),
        ),
        "t2_sag": ("T2 sagittal", "TSE", m),
        "t2_cor": ("T2 coronal", "TSE", m),
        "t2w": ("T2 axial", "TSE", m),
        "dwi": (f"DWI b{_bstr(n.b, ' ')}", "EPI_DWI", ("ORIGINAL", "PRIMARY", "DIFFUSION")),
        "adc": (adc, "EPI_DWI", ("DERIVED", "PRIMARY", "DIFFUSION", "ADC")),
        "calc": (f"DWI CALC b{_bstr(n.calc_b, ' ')}", "EPI_DWI", ("DERIVED", "PRIMARY", "DIFFUSION")),
        "dti": (dti, "EPI_DTI", ("ORIGINAL", "PRIMARY", "DIFFUSION")),
        "trace": (f"{dti} TRACE", "EPI_DTI", ("DERIVED", "PRIMARY", "DIFFUSION", "TRACE")),
        "fa": (f"{dti} FA", "EPI_DTI", ("DERIVED", "PRIMARY", "DIFFUSION", "FA")),
        "coil_reference": ("Coil sensitivity reference", "GRE3D", m),
        "dce": ("DCE T1 axial", "GRE3D", m),
        "screenshot": ("Screenshot", "", ("DERIVED", "SECONDARY")),
    }
    return table[kind]


_NAMERS = {"siemens": _siemens, "ge": _ge, "philips": _philips, "standard": _standard}
_DERIVED_KINDS = ("adc", "calc", "trace", "fa")
_PIXEL_CONTRAST = {"adc": "ADC", "fa": "FA", "trace": "TRACE"}
_VARIANTS = ("", "high_b", "dti", "mddw")


def series_style(
    vendor: str,
    kind: str,
    b_values: tuple[int, ...] = (),
    calc_b_values: tuple[int, ...] = (),
    second_localizer: bool = False,
    variant: str = "",
    n_directions: int = 0,
) -> SeriesStyle:
    """The look of series ``kind`` (see ``SERIES_KINDS``) for ``vendor``.

    Parameters
    ----------
    vendor
        ``siemens``, ``ge``, ``philips`` or ``standard``.
    kind
        Series kind.
    b_values
        b-values of the diffusion acquisition the series belongs to (they appear in names).
    calc_b_values
        b-values of the calculated series.
    second_localizer
        The style of a second, sagittal-only localizer.
    variant
        Which diffusion acquisition: ``""`` (the standard one), ``"high_b"`` (a separate high-b scan),
        ``"dti"`` (a multi-direction scan) or ``"mddw"`` (Siemens' multi-direction scan as the only one).
    n_directions
        Gradient directions of a DTI scan (they appear in its names).
    """
    if kind not in SERIES_KINDS:
        raise ValueError(f"unknown series kind {kind!r}: expected one of {', '.join(SERIES_KINDS)}")
    if variant not in _VARIANTS:
        raise ValueError(f"unknown diffusion variant {variant!r}: expected one of {_VARIANTS}")
    try:
        namer = _NAMERS[vendor]
    except KeyError:
        raise ValueError(f"unknown vendor {vendor!r}: expected one of {', '.join(_NAMERS)}") from None
    names = _Names(b_values, calc_b_values, second_localizer, variant, n_directions)
    description, seq, image_type = namer(kind, names)
    scan, variant_seq, options, acq, tr, te, flip, etl, nav, bw, contrast, flavour = _ACQ[kind]
    first = "DERIVED" if kind in _DERIVED_KINDS else "ORIGINAL"
    if vendor == "siemens" and kind in ("dwi", "dti"):
        seq = f"*ep_b{b_values[0]}t" if b_values else "*ep_b0t"
    return SeriesStyle(
        description=description,
        protocol=re.split(r"_?CALC|_ADC$|_TRACEW$|_FA$", description)[0].strip(" _") or description,
        sequence_name=seq,
        scanning_sequence=scan,
        sequence_variant=variant_seq,
        scan_options=options,
        acquisition_type=acq,
        image_type=image_type,
        enhanced_image_type=(first, "PRIMARY", flavour, _PIXEL_CONTRAST.get(kind, "NONE")),
        acquisition_contrast=contrast,
        repetition_time=tr,
        echo_time=te,
        flip_angle=flip,
        echo_train_length=etl,
        averages=nav,
        pixel_bandwidth=bw,
        rescaled=vendor == "philips" and kind in ("t2w", "dwi", "adc", "calc", "dti", "trace"),
    )


def siemens_sequence_name(b_value: int, direction: int | None = None) -> str:
    """Siemens Sequence Name of a diffusion image.

    ``*ep_b800t`` for a trace image at ``b_value``; for a DTI image ``*ep_b0`` at b = 0 and
    ``*ep_b1000#3`` for direction 3 (1-based ``direction``).
    """
    if direction is None:
        return f"*ep_b{b_value}t"
    return f"*ep_b{b_value}#{direction}" if b_value > 0 else f"*ep_b{b_value}"
