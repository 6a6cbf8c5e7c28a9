"""Synthetic biparametric prostate MR studies as DICOM, with PI-CAI style ground truth.

Each case is a complete, deterministic (by seed) study like a scanner sends it: localizers, sagittal and
coronal T2, axial T2W (sometimes twice), a multi-b DWI series, an ADC map, sometimes a calculated high-b
series, optionally a second diffusion acquisition (a separate high-b scan with its ADC, or a DTI scan with
TRACEW, ADC and FA), DCE, a coil reference scan and a screenshot; in the conventions of one of four vendors
(with their real b-value habits, such as b = 0 tags on series that are not diffusion-weighted), as classic
or enhanced objects, uncompressed or losslessly compressed. Labels (csPCa lesions with their ISUP grade,
gland, zones) lie on the grid of the T2W series that a selector should choose.

Example
-------
>>> from training.synth import SynthConfig, generate
>>> folders = generate("out", cases=2, seed=0, config=SynthConfig(vendor="mixed"))  # doctest: +SKIP
"""

from __future__ import annotations

from training.synth.config import COMPRESSIONS, EXTRA_DWI, LESION_KINDS, PROFILES, VENDORS, SynthConfig
from training.synth.generator import generate, generate_case

__all__ = [
    "COMPRESSIONS",
    "EXTRA_DWI",
    "LESION_KINDS",
    "PROFILES",
    "VENDORS",
    "SynthConfig",
    "generate",
    "generate_case",
]
