"""Configuration of the synthetic study generator and its per-case resolution.

:class:`SynthConfig` is what a caller chooses; a field left at ``None`` is drawn per case from the seed.
:func:`resolve_case` turns a configuration, a seed and a case index into a :class:`CasePlan` in which every
choice is fixed, so that everything downstream is a pure function of the plan.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)

__all__ = [
    "COMPRESSIONS",
    "EXTRA_DWI",
    "LESION_KINDS",
    "PROFILES",
    "VENDORS",
    "CasePlan",
    "SynthConfig",
    "case_ids",
    "case_rng",
    "resolve_case",
]

VENDORS: tuple[str, ...] = ("siemens", "ge", "philips", "standard")
"""Vendor conventions that the generator writes."""

VENDOR_CHOICES: tuple[str, ...] = (*VENDORS, "mixed")
"""Allowed values of :attr:`SynthConfig.vendor` (besides ``None``); ``mixed`` cycles by case index."""

COMPRESSIONS: tuple[str, ...] = ("rle", "jpegls", "jpeg2000", "jpeg-lossless")
"""Lossless pixel encodings (besides ``None``: uncompressed Explicit VR Little Endian)."""

PROFILES: tuple[str, ...] = ("small", "full")
"""Size profiles: ``small`` for tests, ``full`` like the real fixture."""

EXTRA_DWI: tuple[str, ...] = ("none", "high_b", "dti")
#: How the study's diffusion is acquired: ``standard`` (a trace-weighted multi-b scan) or ``mddw`` (Siemens'
#: multi-direction scan: directional images, and TRACEW, ADC and calculated-b outputs flagged DIRECTIONAL).
DWI_SCHEMES: tuple[str, ...] = ("standard", "mddw")
"""Extra diffusion acquisitions of a study: none, a separate high-b scan, or a multi-direction (DTI) scan."""

LESION_KINDS: tuple[str, ...] = ("cspca", "indolent", "bph", "prostatitis")
"""Lesion classes: clinically significant cancer (ISUP 2-5), indolent cancer (ISUP 1), benign mimics."""

MAX_TILT_DEG = 20.0

# Typical b-value sets (s/mm2) of one multi-b DWI series and of the scanner-calculated series.
_DWI_B_SETS: tuple[tuple[int, ...], ...] = (
    (50, 400, 800),
    (0, 100, 500, 1000),
    (50, 800, 1400),
    (50, 500, 1000),
)
_CALC_B_SETS: tuple[tuple[int, ...], ...] = ((1400,), (1000, 1500), (1500,), (2000,))
# Drawn extra acquisition (when SynthConfig.extra_dwi is None) and its probabilities.
_EXTRA_DWI_P: tuple[float, ...] = (0.5, 0.25, 0.25)
# Lowest and highest b-values of a separate high-b acquisition (the high one above every other b-value).
_HIGH_B_LOW: tuple[int, ...] = (0, 50)
_HIGH_B_HIGH: tuple[int, ...] = (1500, 2000)
# b-value of a DTI scan: 1000 when the standard acquisition reaches higher, else this much below its top.
_DTI_B = 1000
_DTI_B_BELOW_TOP = 200


def _fail(name: str, value: object, allowed: str) -> None:
    raise ValueError(f"SynthConfig.{name} = {value!r} is invalid: allowed values are {allowed}")


@dataclass(frozen=True)
class SynthConfig:
    """What to generate. Fields left at ``None`` are drawn per case from the seed.

    Parameters
    ----------
    vendor
        ``"siemens"``, ``"ge"``, ``"philips"``, ``"standard"``, ``"mixed"`` (cycles through the four by
        case index) or ``None`` (drawn by seed).
    enhanced
        Write Enhanced MR Image Storage (one multi-frame object per series) instead of one classic MR
        object per slice.
    compress
        ``None`` (uncompressed), ``"rle"``, ``"jpegls"``, ``"jpeg2000"`` or ``"jpeg-lossless"``; all lossless.
    profile
        ``"small"`` (tiny, fast, for tests) or ``"full"`` (sizes of the real fixture).
    tilt_deg
        Oblique tilt of the axial series about the left-right axis, in degrees (``-20..20``); ``None``:
        drawn by seed (zero or a few degrees).
    repeat_t2
        Acquire the axial T2W twice (identical geometry, later repeat); ``None``: drawn by seed.
    calc_bvalue
        Add a scanner-calculated high-b series; ``None``: drawn by seed.
    dce
        Add a dynamic contrast-enhanced T1 series; ``None``: drawn by seed.
    coil_reference
        Add a coil sensitivity reference scan; ``None``: drawn by seed.
    screenshot
        Add a derived screenshot (Secondary Capture); ``None``: drawn by seed.
    n_localizers
        Number of localizer series, 1 or 2; ``None``: drawn by seed.
    b_values
        b-values (s/mm2) of the DWI series, ascending, at least two, the largest >= 800; ``None``: drawn (for
        the ``standard`` vendor, which writes no b-value tag on b = 0 images, most drawn sets acquire b = 0
        instead of their lowest b-value, so that this convention shows).
    calc_b_values
        b-values of the calculated series, each above the largest acquired one; ``None``: drawn.
    lesion_kinds
        Exactly these lesions (kinds from ``cspca``, ``indolent``, ``bph``, ``prostatitis``; empty: none);
        ``None``: 0 to 3 lesions drawn by seed.
    noise
        Multiplier of the noise level (``0`` gives noiseless images; at most 5).
    extra_dwi
        A second diffusion acquisition after the standard DWI, on its grid: ``"none"`` (the default),
        ``"high_b"`` (a separate scan at b = 0 or 50 and a high b of 1500 or 2000 above every other b-value
        of the study, with its own ADC map), ``"dti"`` (a multi-direction scan with its TRACEW, ADC and FA
        series, at a b-value below the standard acquisition's highest) or ``None`` (drawn by seed).
    dwi_scheme
        ``"standard"`` (the default) or ``"mddw"``: the study's only diffusion acquisition is a Siemens
        multi-direction scan (MDDW): its directional images (one volume per gradient direction and b-value,
        with their vectors) and its TRACEW, ADC and calculated-b series, which Siemens flags DIRECTIONAL in
        its private DiffusionDirectionality (0019,xx0D) although they are trace images and maps. Siemens
        only, classic images, no extra acquisition.
    """

    vendor: str | None = "siemens"
    enhanced: bool = False
    compress: str | None = None
    profile: str = "small"
    tilt_deg: float | None = None
    repeat_t2: bool | None = None
    calc_bvalue: bool | None = None
    dce: bool | None = None
    coil_reference: bool | None = None
    screenshot: bool | None = None
    n_localizers: int | None = None
    b_values: tuple[int, ...] | None = None
    calc_b_values: tuple[int, ...] | None = None
    lesion_kinds: tuple[str, ...] | None = None
    noise: float = 1.0
    extra_dwi: str | None = "none"
    dwi_scheme: str = "standard"

    def __post_init__(self) -> None:
        if self.vendor is not None and self.vendor not in VENDOR_CHOICES:
            _fail("vendor", self.vendor, f"{', '.join(VENDOR_CHOICES)} or None")
        if not isinstance(self.enhanced, bool):
            _fail("enhanced", self.enhanced, "True or False")
        if self.compress is not None and self.compress not in COMPRESSIONS:
            _fail("compress", self.compress, f"{', '.join(COMPRESSIONS)} or None")
        if self.profile not in PROFILES:
            _fail("profile", self.profile, ", ".join(PROFILES))
        if self.tilt_deg is not None and (
            isinstance(self.tilt_deg, bool)
            or not isinstance(self.tilt_deg, int | float)
            or not math.isfinite(self.tilt_deg)
            or abs(self.tilt_deg) > MAX_TILT_DEG
        ):
            _fail(
                "tilt_deg",
                self.tilt_deg,
                f"a number of degrees from -{MAX_TILT_DEG:g} to {MAX_TILT_DEG:g}, or None",
            )
        for name in ("repeat_t2", "calc_bvalue", "dce", "coil_reference", "screenshot"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, bool):
                _fail(name, value, "True, False or None")
        if self.n_localizers is not None and self.n_localizers not in (1, 2):
            _fail("n_localizers", self.n_localizers, "1, 2 or None")
        if self.b_values is not None:
            self._check_b_values()
        if self.calc_b_values is not None:
            self._check_calc_b_values()
        if self.lesion_kinds is not None:
            kinds = self.lesion_kinds
            if not isinstance(kinds, tuple) or any(k not in LESION_KINDS for k in kinds) or len(kinds) > 6:
                _fail("lesion_kinds", kinds, f"a tuple of at most 6 of {', '.join(LESION_KINDS)}, or None")
        if (
            isinstance(self.noise, bool)
            or not isinstance(self.noise, int | float)
            or not 0 <= self.noise <= 5
        ):
            _fail("noise", self.noise, "a number from 0 to 5")
        if self.extra_dwi is not None and self.extra_dwi not in EXTRA_DWI:
            _fail("extra_dwi", self.extra_dwi, f"{', '.join(EXTRA_DWI)} or None")
        if self.dwi_scheme not in DWI_SCHEMES:
            _fail("dwi_scheme", self.dwi_scheme, ", ".join(DWI_SCHEMES))
        if self.dwi_scheme == "mddw" and (
            self.vendor != "siemens" or self.enhanced or self.extra_dwi != "none"
        ):
            raise ValueError(
                "SynthConfig.dwi_scheme = 'mddw' is Siemens' multi-direction diffusion scan as the study's only "
                f"diffusion acquisition: it needs vendor='siemens' (got {self.vendor!r}), enhanced=False (got "
                f"{self.enhanced!r}) and extra_dwi='none' (got {self.extra_dwi!r})"
            )

    def _check_b_values(self) -> None:
        values = self.b_values
        ok = (
            isinstance(values, tuple)
            and len(values) >= 2
            and all(isinstance(b, int) and not isinstance(b, bool) and 0 <= b <= 5000 for b in values)
            and list(values) == sorted(set(values))
            and max(values) >= 800
        )
        if not ok:
            _fail(
                "b_values",
                values,
                "a tuple of at least two ascending distinct integers 0..5000, the largest >= 800",
            )

    def _check_calc_b_values(self) -> None:
        values = self.calc_b_values
        top = max(self.b_values) if self.b_values else 800
        ok = (
            isinstance(values, tuple)
            and 1 <= len(values) <= 3
            and all(isinstance(b, int) and not isinstance(b, bool) and top < b <= 5000 for b in values)
            and list(values) == sorted(set(values))
        )
        if not ok:
            _fail(
                "calc_b_values",
                values,
                "a tuple of 1 to 3 ascending distinct integers up to 5000, each above 800 and above the largest "
                "of b_values",
            )


@dataclass(frozen=True)
class CasePlan:
    """Every choice of one case, fixed. Built by :func:`resolve_case`.

    ``b_values`` and ``calc_b_values`` are those of the standard DWI acquisition; ``extra_dwi`` is ``none``,
    ``high_b`` or ``dti`` and ``extra_b_values`` the b-values of that extra acquisition (empty for ``none``;
    ``(low, high)`` for ``high_b``; ``(0, b)`` for ``dti``, whose ``b`` is measured in several directions).
    """

    seed: int
    case_index: int
    patient_id: str
    study_id: str
    vendor: str
    enhanced: bool
    compress: str | None
    profile: str
    tilt_deg: float
    repeat_t2: bool
    calc_b_values: tuple[int, ...]
    dce: bool
    coil_reference: bool
    coil_reference_early: bool
    screenshot: bool
    n_localizers: int
    second_localizer_sagittal: bool
    b_values: tuple[int, ...]
    lesion_kinds: tuple[str, ...] | None
    noise: float
    siemens_private_as_ob: bool
    extra_dwi: str
    extra_b_values: tuple[int, ...]
    dwi_scheme: str = "standard"


def case_ids(seed: int, case_index: int) -> tuple[str, str]:
    """Return the PI-CAI-like ``(patient_id, study_id)`` of a case, deterministic from seed and index."""
    n = (seed % 9) * 1000 + case_index
    return str(90001 + n % 9999), str(1900001 + n % 99999)


def case_rng(seed: int, case_index: int, stream: int) -> np.random.Generator:
    """Independent random stream ``stream`` of one case (so that one choice does not shift the others)."""
    return np.random.default_rng([seed, case_index, stream])


def _extra_b_values(extra: str, top: int, high_low: int, high_first: int) -> tuple[int, ...]:
    """b-values of the extra acquisition ``extra`` of a study whose standard acquisition reaches ``top``.

    A high-b scan goes above every other b-value of the study (the drawn one of 1500 and 2000 when it is
    above ``top``, else the other, else the next multiple of 500); a DTI scan stays below ``top``, so that
    which acquisition gives the high b-value image is never in doubt.
    """
    if extra == "high_b":
        ordered = (_HIGH_B_HIGH[high_first], *(b for b in _HIGH_B_HIGH if b != _HIGH_B_HIGH[high_first]))
        high = next((b for b in ordered if b > top), 500 * (top // 500 + 1))
        return (high_low, high)
    if extra == "dti":
        return (0, _DTI_B if top > _DTI_B else top - _DTI_B_BELOW_TOP)
    return ()


@dataclass(frozen=True)
class _CaseDraws:
    """Every value drawn for one case, before the configuration overrides any of them.

    Every value is drawn, in a fixed order, whether the configuration fixes it or not, so that fixing one
    field leaves the others unchanged.
    """

    vendor: str
    tilt_deg: float
    repeat_t2: bool
    calc_bvalue: bool
    dce: bool
    coil_reference: bool
    coil_reference_early: bool
    screenshot: bool
    n_localizers: int
    second_localizer_sagittal: bool
    b_values: tuple[int, ...]
    calc_b_values: tuple[int, ...]
    siemens_private_as_ob: bool
    extra_dwi: str
    b0_first: bool
    high_b_low: int
    high_b_first: int


def _draw_case(rng: np.random.Generator) -> _CaseDraws:
    """Draw every choice of a case from its main random stream, in the order that fixes them for a seed.

    Parameters
    ----------
    rng
        Stream 0 of the case (see :func:`case_rng`).

    Returns
    -------
    _CaseDraws
        The drawn values.
    """
    vendor = VENDORS[int(rng.integers(len(VENDORS)))]
    tilt = 0.0 if rng.random() < 0.35 else float(np.round(rng.uniform(2.0, 9.0) * rng.choice([-1, 1]), 2))
    repeat_t2 = bool(rng.random() < 0.35)
    calc = bool(rng.random() < 0.5)
    dce = bool(rng.random() < 0.4)
    coil = bool(rng.random() < 0.5)
    coil_early = bool(rng.random() < 0.5)
    shot = bool(rng.random() < 0.3)
    n_localizers = 1 + int(rng.random() < 0.4)
    second_sag = bool(rng.random() < 0.5)
    b_values = _DWI_B_SETS[int(rng.integers(len(_DWI_B_SETS)))]
    calc_b_values = _CALC_B_SETS[int(rng.integers(len(_CALC_B_SETS)))]
    as_ob = bool(rng.random() < 0.6)
    # Later additions: drawn after the values above, so that those stay what they were for a seed.
    extra = EXTRA_DWI[int(rng.choice(len(EXTRA_DWI), p=_EXTRA_DWI_P))]
    b0_first = bool(rng.random() < 0.7)
    high_low = _HIGH_B_LOW[int(rng.integers(len(_HIGH_B_LOW)))]
    high_first = int(rng.integers(len(_HIGH_B_HIGH)))
    return _CaseDraws(
        vendor=vendor,
        tilt_deg=tilt,
        repeat_t2=repeat_t2,
        calc_bvalue=calc,
        dce=dce,
        coil_reference=coil,
        coil_reference_early=coil_early,
        screenshot=shot,
        n_localizers=n_localizers,
        second_localizer_sagittal=second_sag,
        b_values=b_values,
        calc_b_values=calc_b_values,
        siemens_private_as_ob=as_ob,
        extra_dwi=extra,
        b0_first=b0_first,
        high_b_low=high_low,
        high_b_first=high_first,
    )


def _either(value: bool | None, drawn: bool) -> bool:
    """The configured ``value``, or ``drawn`` when the configuration leaves it to the seed."""
    return drawn if value is None else value


def _case_vendor(config: SynthConfig, case_index: int, drawn: str) -> str:
    """Vendor of a case: the configured one, cycled by case index for ``mixed``, or ``drawn``."""
    if config.vendor is None:
        return drawn
    if config.vendor == "mixed":
        return VENDORS[case_index % len(VENDORS)]
    return config.vendor


def _acquired_b_values(config: SynthConfig, vendor: str, calc: bool, draws: _CaseDraws) -> tuple[int, ...]:
    """b-values of the standard DWI acquisition of a case.

    Parameters
    ----------
    config
        The generator configuration.
    vendor
        The case's vendor.
    calc
        Whether the case has a calculated high-b series.
    draws
        The case's drawn values.

    Returns
    -------
    tuple of int
        The configured b-values, else the drawn set (a low set when configured calculated b-values would
        not lie above the drawn one; starting at b = 0 for most cases of the ``standard`` vendor).
    """
    if config.b_values is not None:
        b_values = config.b_values
    elif config.calc_b_values is not None and calc and max(draws.b_values) >= min(config.calc_b_values):
        b_values = (50, 400, 800)  # keep the calculated b-values above the acquired ones
    else:
        b_values = draws.b_values
    if vendor == "standard" and config.b_values is None and b_values[0] > 0 and draws.b0_first:
        # This convention writes no b-value tag on b = 0 images: acquire b = 0 so that it shows.
        b_values = (0, *b_values[1:])
    return b_values


def _calculated_b_values(
    config: SynthConfig, calc: bool, b_values: tuple[int, ...], drawn: tuple[int, ...]
) -> tuple[int, ...]:
    """b-values of the calculated series (empty without one), each above every acquired b-value.

    Parameters
    ----------
    config
        The generator configuration.
    calc
        Whether the case has a calculated high-b series.
    b_values
        The acquired b-values.
    drawn
        The drawn calculated b-values.

    Returns
    -------
    tuple of int
        The configured ones, else those drawn above ``b_values`` (or 600 above their largest).
    """
    if not calc:
        return ()
    if config.calc_b_values is not None:
        return config.calc_b_values
    return tuple(b for b in drawn if b > max(b_values)) or (max(b_values) + 600,)


def resolve_case(config: SynthConfig, seed: int, case_index: int) -> CasePlan:
    """Fix every choice of case ``case_index`` of ``config`` drawn from ``seed``.

    Parameters
    ----------
    config
        The generator configuration.
    seed
        Non-negative seed of the whole data set.
    case_index
        Non-negative index of the case within the data set.

    Returns
    -------
    CasePlan
        The resolved plan; the same inputs always give the same plan.
    """
    if seed < 0 or case_index < 0:
        raise ValueError(f"seed ({seed}) and case_index ({case_index}) must be non-negative integers")
    draws = _draw_case(case_rng(seed, case_index, 0))
    vendor = _case_vendor(config, case_index, draws.vendor)
    calc = _either(config.calc_bvalue, draws.calc_bvalue)
    b_values = _acquired_b_values(config, vendor, calc, draws)
    calc_b = _calculated_b_values(config, calc, b_values, draws.calc_b_values)
    extra = config.extra_dwi if config.extra_dwi is not None else draws.extra_dwi
    extra_b = _extra_b_values(extra, max((*b_values, *calc_b)), draws.high_b_low, draws.high_b_first)
    patient_id, study_id = case_ids(seed, case_index)
    plan = CasePlan(
        seed=seed,
        case_index=case_index,
        patient_id=patient_id,
        study_id=study_id,
        vendor=vendor,
        enhanced=config.enhanced,
        compress=config.compress,
        profile=config.profile,
        tilt_deg=float(config.tilt_deg) if config.tilt_deg is not None else draws.tilt_deg,
        repeat_t2=_either(config.repeat_t2, draws.repeat_t2),
        calc_b_values=calc_b,
        dce=_either(config.dce, draws.dce),
        coil_reference=_either(config.coil_reference, draws.coil_reference),
        coil_reference_early=draws.coil_reference_early,
        screenshot=_either(config.screenshot, draws.screenshot),
        n_localizers=config.n_localizers if config.n_localizers is not None else draws.n_localizers,
        second_localizer_sagittal=draws.second_localizer_sagittal,
        b_values=b_values,
        lesion_kinds=config.lesion_kinds,
        noise=float(config.noise),
        siemens_private_as_ob=draws.siemens_private_as_ob,
        extra_dwi=extra,
        extra_b_values=extra_b,
        dwi_scheme=config.dwi_scheme,
    )
    logger.debug("case %d of seed %d resolved: %s", case_index, seed, plan)
    return plan
