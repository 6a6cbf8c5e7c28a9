"""A pelvic phantom in patient space: anatomy, prostate zones, lesions and their tissue properties.

Everything is defined in LPS millimetres, so any series samples the same physical object at its own voxel
centres and all series of a study are consistent. Structures are (possibly irregular) ellipsoids painted in
order; the prostate has a peripheral zone (PZ, the posterior/lateral shell), a transition zone (TZ, central
and anterior) with the anterior fibromuscular stroma and the urethra counted in it, and lesions of known
class: clinically significant cancer (ISUP 2-5), indolent cancer (ISUP 1), BPH nodules in the TZ and
prostatitis bands in the PZ.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from numpy.typing import NDArray

from training.synth.config import LESION_KINDS, CasePlan, case_rng
from training.synth.geometry import Lattice, rotation_x

logger = logging.getLogger(__name__)

__all__ = ["Lesion", "Phantom", "Sample", "TissueProperties", "build_phantom"]

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int16]

# Tissue classes. Lesion i (0-based) is painted as LESION_BASE + i.
AIR, FAT, MUSCLE, MARROW, CORTEX, URINE, RECT_WALL, RECT_LUMEN, VESICLE, PLEXUS = range(10)
PZ, TZ, AFMS, URETHRA = 10, 11, 12, 13
LESION_BASE = 20

# Property columns: relative T2W signal, ADC (1e-6 mm2/s), relative b0 signal (fat suppressed),
# relative T1W (fat-suppressed) signal, DCE enhancement amplitude, wash-in and wash-out times (s), proton density.
PROPS: tuple[str, ...] = ("t2", "adc", "s0", "t1w", "enh", "tin", "tout", "pd")
_CLASS_TABLE: dict[int, tuple[float, ...]] = {
    AIR: (0.0, 0.0, 0.0, 0.0, 0.0, 60.0, 1e4, 0.0),
    FAT: (0.85, 400.0, 0.06, 0.15, 0.1, 90.0, 1e4, 0.9),
    MUSCLE: (0.22, 1450.0, 0.20, 0.35, 0.5, 60.0, 3000.0, 0.6),
    MARROW: (0.55, 500.0, 0.08, 0.30, 0.2, 60.0, 3000.0, 0.8),
    CORTEX: (0.03, 300.0, 0.02, 0.03, 0.0, 60.0, 1e4, 0.05),
    URINE: (1.0, 2900.0, 1.0, 0.08, 0.0, 60.0, 1e4, 1.0),
    RECT_WALL: (0.30, 1500.0, 0.35, 0.35, 0.9, 30.0, 2000.0, 0.6),
    RECT_LUMEN: (0.10, 1500.0, 0.05, 0.05, 0.0, 60.0, 1e4, 0.1),
    VESICLE: (0.90, 1900.0, 0.85, 0.20, 0.3, 90.0, 5000.0, 0.9),
    PLEXUS: (0.80, 1800.0, 0.50, 0.30, 1.0, 20.0, 3000.0, 0.8),
    PZ: (0.72, 1700.0, 0.70, 0.35, 0.6, 70.0, 4000.0, 0.8),
    TZ: (0.42, 1300.0, 0.55, 0.35, 0.8, 45.0, 3000.0, 0.75),
    AFMS: (0.18, 1100.0, 0.35, 0.30, 0.4, 80.0, 4000.0, 0.6),
    URETHRA: (0.60, 1700.0, 0.60, 0.30, 0.6, 40.0, 3000.0, 0.8),
}
_TABLE = np.zeros((LESION_BASE, len(PROPS)))
for _cls, _row in _CLASS_TABLE.items():
    _TABLE[_cls] = _row

_ISUP_GLEASON = {0: "0+0", 1: "3+3", 2: "3+4", 3: "4+3", 4: "4+4", 5: "4+5"}


class Sample(NamedTuple):
    """Classification of sample points: tissue class, lesion index (-1: none) and zone (0/1 PZ/2 TZ)."""

    cls: IntArray
    lesion: IntArray
    zone: NDArray[np.uint8]


class TissueProperties(NamedTuple):
    """Per-point tissue properties (arrays of the points' shape), see ``PROPS``."""

    t2: FloatArray
    adc: FloatArray
    s0: FloatArray
    t1w: FloatArray
    enh: FloatArray
    tin: FloatArray
    tout: FloatArray
    pd: FloatArray


@dataclass(frozen=True)
class Ellipsoid:
    """An ellipsoid ``|R^T (p - c) / r| < bound(direction)`` with an optional wavy (irregular) boundary."""

    centre: tuple[float, float, float]
    radii: tuple[float, float, float]
    rotation: tuple[tuple[float, float, float], ...] = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))
    irregularity: float = 0.0
    waves: tuple[tuple[float, float, float, float], ...] = ()

    def local(self, pts: FloatArray) -> FloatArray:
        """Normalized local coordinates ``q`` (``|q| == 1`` on the regular surface)."""
        rot = np.asarray(self.rotation)
        q = (pts - np.asarray(self.centre)) @ rot
        return np.asarray(q / np.asarray(self.radii), dtype=np.float64)

    def inside(self, pts: FloatArray, scale: float = 1.0) -> NDArray[np.bool_]:
        """Whether each point (``(..., 3)``) lies inside the ellipsoid scaled by ``scale``."""
        q = self.local(pts)
        rho2 = np.einsum("...i,...i->...", q, q)
        if self.irregularity <= 0.0 or not self.waves:
            return np.asarray(rho2 < scale * scale)
        rho = np.sqrt(rho2) + 1e-9
        u = q / rho[..., None]
        bound = np.ones_like(rho)
        for wx, wy, wz, phase in self.waves:
            bound += (
                self.irregularity
                / len(self.waves)
                * np.sin(3.0 * (u[..., 0] * wx + u[..., 1] * wy + u[..., 2] * wz) + phase)
            )
        return np.asarray(rho < scale * bound)

    def aabb(self) -> tuple[FloatArray, FloatArray]:
        """Axis-aligned bounding box ``(lo, hi)`` of the (irregular) ellipsoid."""
        rot = np.asarray(self.rotation)
        half = np.sqrt(((rot * np.asarray(self.radii)[None, :]) ** 2).sum(axis=1)) * (1.0 + self.irregularity)
        c = np.asarray(self.centre)
        return c - half, c + half

    def bounding_radius(self) -> float:
        """Radius of a sphere around the centre that contains the (irregular) ellipsoid."""
        return max(self.radii) * (1.0 + self.irregularity)


@dataclass(frozen=True)
class Lesion:
    """One lesion with its ground truth and tissue properties."""

    id: int
    kind: str
    isup: int
    zone: str
    pirads: int
    shape: Ellipsoid
    t2: float
    adc: float
    s0: float
    enh: float
    tin: float
    tout: float

    @property
    def gleason(self) -> str:
        """Gleason score string of the lesion (``0+0`` for benign)."""
        return _ISUP_GLEASON[self.isup]

    @property
    def label_value(self) -> int:
        """Value of the lesion in the csPCa label: its ISUP grade when >= 2, else 0 (not labelled)."""
        return self.isup if self.isup >= 2 else 0


class _Texture:
    """A smooth random field (a sum of plane waves) of about unit amplitude."""

    def __init__(self, rng: np.random.Generator, n: int, wavelength: tuple[float, float]) -> None:
        dirs = rng.normal(size=(n, 3))
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
        k = 2.0 * math.pi / rng.uniform(*wavelength, size=n)
        self.k = dirs * k[:, None]
        self.phase = rng.uniform(0.0, 2.0 * math.pi, size=n)
        self.norm = math.sqrt(2.0 / n)

    def __call__(self, pts: FloatArray) -> FloatArray:
        arg = pts @ self.k.T + self.phase
        return np.asarray(np.cos(arg).sum(axis=-1) * self.norm, dtype=np.float64)


def _rot_tuple(m: FloatArray) -> tuple[tuple[float, float, float], ...]:
    return tuple((float(r[0]), float(r[1]), float(r[2])) for r in m)


def _random_rotation(rng: np.random.Generator) -> FloatArray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return np.asarray(q, dtype=np.float64)


def _waves(rng: np.random.Generator, n: int = 4) -> tuple[tuple[float, float, float, float], ...]:
    return tuple(
        (float(a), float(b), float(c), float(d))
        for a, b, c, d in zip(
            rng.normal(size=n),
            rng.normal(size=n),
            rng.normal(size=n),
            rng.uniform(0, 2 * math.pi, n),
            strict=True,
        )
    )


class Phantom:
    """The anatomy of one case. Build it with :func:`build_phantom`.

    Attributes
    ----------
    gland_centre
        Centre of the prostate (LPS mm).
    gland, tz
        Ellipsoids of the whole gland and of the transition zone.
    lesions
        The lesions, ids from 1.
    """

    def __init__(self, plan: CasePlan) -> None:
        rng = case_rng(plan.seed, plan.case_index, 1)
        pc = np.array([rng.uniform(-12, 12), rng.uniform(0, 30), rng.uniform(-15, 5)])
        self.gland_centre = pc
        a, b, c = rng.uniform(20, 27), rng.uniform(14, 19), rng.uniform(16, 22)
        g_rot = rotation_x(rng.uniform(5, 20)) @ _rot_z(rng.uniform(-5, 5))
        self.gland = Ellipsoid(tuple(pc), (a, b, c), _rot_tuple(g_rot))
        tz_scale = rng.uniform(0.85, 1.1)
        tz_centre = pc + g_rot @ np.array([0.0, -0.28 * b, 0.12 * c])
        self.tz = Ellipsoid(
            tuple(tz_centre),
            (0.62 * a * tz_scale, 0.55 * b * tz_scale, 0.7 * c * tz_scale),
            _rot_tuple(g_rot),
        )
        self.urethra = Ellipsoid(tuple(tz_centre), (2.2, 2.2, c * 1.2), _rot_tuple(g_rot))
        self.plexus = Ellipsoid(tuple(pc), (a + 2.5, b + 2.5, c + 1.5), _rot_tuple(g_rot))
        self._gland_rot = g_rot
        self._structures = self._pelvis(rng, pc, (a, b, c))
        self.pz_adc = float(rng.uniform(1600, 1800))
        self.tz_adc = float(rng.uniform(1200, 1400))
        self._tex_pz = _Texture(rng, 8, (4.0, 12.0))
        self._tex_tz = _Texture(rng, 8, (3.0, 9.0))
        self._tex_adc = _Texture(rng, 6, (5.0, 15.0))
        self.lesions = _draw_lesions(self, case_rng(plan.seed, plan.case_index, 2), plan.lesion_kinds)
        self._lesion_tex = _Texture(rng, 8, (2.0, 6.0))

    @staticmethod
    def _pelvis(
        rng: np.random.Generator, pc: FloatArray, gland: tuple[float, float, float]
    ) -> list[tuple[int, Ellipsoid]]:
        a, b, c = gland
        x, y, z = (float(v) for v in pc)

        def jit(s: float) -> float:
            return float(rng.uniform(-s, s))

        body_c = (x + jit(5), y + 10 + jit(5), z)
        out: list[tuple[int, Ellipsoid]] = [
            (FAT, Ellipsoid(body_c, (rng.uniform(150, 190), rng.uniform(105, 135), 400)))
        ]
        for side in (-1.0, 1.0):
            out += [
                (MUSCLE, Ellipsoid((x + side * (85 + jit(5)), y + 55 + jit(5), z), (55, 40, 250))),  # gluteus
                (
                    MUSCLE,
                    Ellipsoid((x + side * (a + 20 + jit(3)), y + jit(3), z), (11, 30, 80)),
                ),  # obturator int.
                (MUSCLE, Ellipsoid((x + side * (a + 6), y + b + 4, z - 5), (6, 18, 45))),  # levator ani
                (MUSCLE, Ellipsoid((x + side * 70, y - 48, z), (24, 20, 250))),  # iliopsoas / pectineus
                (MUSCLE, Ellipsoid((x + side * 28, y - 88, z + 30), (26, 12, 250))),  # rectus abdominis
            ]
        bones = [
            ((x - 95, y - 20, z + 22), (25.0, 25.0, 25.0)),  # femoral heads
            ((x + 95, y - 20, z + 22), (25.0, 25.0, 25.0)),
            ((x - 112, y - 8, z - 40), (16.0, 16.0, 60.0)),  # femoral shafts
            ((x + 112, y - 8, z - 40), (16.0, 16.0, 60.0)),
            ((x, y - 45 + jit(3), z + 8), (42.0, 11.0, 22.0)),  # pubic symphysis and rami
            ((x - 55, y + 25, z - 22), (15.0, 19.0, 28.0)),  # ischial tuberosities
            ((x + 55, y + 25, z - 22), (15.0, 19.0, 28.0)),
            ((x, y + 68, z + 25), (12.0, 8.0, 35.0)),  # coccyx
        ]
        for centre, radii in bones:
            out.append((CORTEX, Ellipsoid(centre, radii)))
            out.append((MARROW, Ellipsoid(centre, (radii[0] - 3, radii[1] - 3, radii[2] - 3))))
        fill = rng.uniform(0.7, 1.2)
        out.append((URINE, Ellipsoid((x, y - 8, z + c + 30 * fill - 4), (45 * fill, 35 * fill, 30 * fill))))
        out.append((PLEXUS, Ellipsoid((x, y - 4, z), (a + 2.5, b + 2.0, c + 1.0))))
        out.append((RECT_WALL, Ellipsoid((x, y + b + 14, z), (20, 13.5, 250))))
        out.append((RECT_LUMEN, Ellipsoid((x, y + b + 15, z), (11 + jit(3), 6 + jit(2), 250))))
        for side in (-1.0, 1.0):
            out.append((VESICLE, Ellipsoid((x + side * 17, y + 0.7 * b, z + c + 4), (15, 6, 8))))
        return out

    def classify(self, pts: FloatArray, lattice: Lattice | None = None) -> Sample:
        """Tissue class, lesion index and zone of each point of ``pts`` (``(..., 3)``).

        With ``lattice`` (whose ``points`` are ``pts``) each structure is only evaluated in the part of the
        slice that its bounding box can touch.
        """
        shape = pts.shape[:-1]
        cls = np.full(shape, AIR, dtype=np.int16)
        zone = np.zeros(shape, dtype=np.uint8)
        lesion = np.full(shape, -1, dtype=np.int16)
        for value, ell in self._structures:
            region = _region(ell, pts, lattice)
            if region is not None:
                idx, mask = region
                view = cls[idx]
                view[mask] = value
        region = _region(self.gland, pts, lattice)
        if region is None:
            return Sample(cls, lesion, zone)
        idx, gland = region
        sub = pts[idx]
        in_tz = self.tz.inside(sub) & gland
        q = self.gland.local(sub)
        afms = gland & ~in_tz & (q[..., 1] < -0.72)
        ureth = self.urethra.inside(sub) & gland
        c_view, z_view, l_view = cls[idx], zone[idx], lesion[idx]
        c_view[gland] = PZ
        c_view[in_tz] = TZ
        c_view[afms] = AFMS
        c_view[ureth] = URETHRA
        z_view[gland] = 1
        z_view[in_tz | afms | ureth] = 2
        for i, les in enumerate(self.lesions):
            m = les.shape.inside(sub) & gland
            l_view[m] = i
            c_view[m] = LESION_BASE + i
        return Sample(cls, lesion, zone)

    def properties(self, pts: FloatArray, lattice: Lattice | None = None) -> TissueProperties:
        """Tissue properties at ``pts`` (``(..., 3)``), see ``PROPS``; ``lattice`` as in :meth:`classify`."""
        s = self.classify(pts, lattice)
        base = np.minimum(s.cls, LESION_BASE - 1)
        vals = _TABLE[base]  # (..., n_props), a copy (fancy indexing)
        vals[s.cls == PZ, 1] = self.pz_adc
        vals[s.cls == TZ, 1] = self.tz_adc
        prostate = (s.cls >= PZ) & (s.cls <= URETHRA)
        if prostate.any():
            p = pts[prostate]
            tex_pz = self._tex_pz(p)
            tex_tz = self._tex_tz(p)
            tex_adc = self._tex_adc(p)
            is_tz = (s.cls[prostate] == TZ)[:, None]
            amp = np.where(is_tz[:, 0], 0.16 * tex_tz, 0.07 * tex_pz)
            sub = vals[prostate]
            sub[:, 0] *= 1.0 + amp
            sub[:, 1] *= 1.0 + 0.04 * tex_adc
            vals[prostate] = sub
        for i, les in enumerate(self.lesions):
            m = s.cls == LESION_BASE + i
            if not m.any():
                continue
            p = pts[m]
            tex = self._lesion_tex(p)
            row = np.array([les.t2, les.adc, les.s0, 0.35, les.enh, les.tin, les.tout, 0.8])
            sub = np.broadcast_to(row, (p.shape[0], len(PROPS))).copy()
            if les.kind == "bph":
                w = 1.0 / (1.0 + np.exp(-3.0 * tex))  # 0 stromal .. 1 glandular
                sub[:, 0] = 0.28 + (0.85 - 0.28) * w
                sub[:, 1] = 1050.0 + (1650.0 - 1050.0) * w
                rim = ~les.shape.inside(p, scale=0.88)
                sub[rim, 0] = 0.15
            else:
                sub[:, 0] *= 1.0 + 0.06 * tex
                sub[:, 1] *= 1.0 + 0.03 * tex
            vals[m] = sub
        cols = [np.asarray(vals[..., j], dtype=np.float64) for j in range(len(PROPS))]
        return TissueProperties(*cols)

    def gland_volume_ml(self) -> float:
        """Analytic volume of the gland ellipsoid in ml."""
        a, b, c = self.gland.radii
        return 4.0 / 3.0 * math.pi * a * b * c / 1000.0

    def extent_along(self, direction: FloatArray) -> tuple[float, float]:
        """Interval covered by the gland when projected onto the unit vector ``direction``."""
        rot = np.asarray(self.gland.rotation)
        local = rot.T @ direction
        half = float(np.sqrt(np.sum((np.asarray(self.gland.radii) * local) ** 2)))
        mid = float(self.gland_centre @ direction)
        return mid - half, mid + half


def _region(
    ell: Ellipsoid, pts: FloatArray, lattice: Lattice | None
) -> tuple[tuple[slice, ...], NDArray[np.bool_]] | None:
    """Index of the points that ``ell`` may touch and which of them are inside; ``None``: none."""
    if lattice is None:
        full = tuple(slice(None) for _ in pts.shape[:-1])
        return full, ell.inside(pts)
    window = lattice.window(*ell.aabb())
    if window is None:
        return None
    idx = (slice(None), window[0], window[1])
    return idx, ell.inside(pts[idx])


def _rot_z(angle_deg: float) -> FloatArray:
    t = math.radians(angle_deg)
    c, s = math.cos(t), math.sin(t)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _draw_kinds(rng: np.random.Generator) -> tuple[str, ...]:
    n = int(rng.choice(4, p=[0.25, 0.35, 0.25, 0.15]))
    idx = rng.choice(len(LESION_KINDS), size=n, p=[0.4, 0.2, 0.25, 0.15])
    return tuple(LESION_KINDS[int(i)] for i in idx)


def _radius_for(volume_ml: float) -> float:
    return float((3.0 * volume_ml * 1000.0 / (4.0 * math.pi)) ** (1.0 / 3.0))


def _draw_lesions(ph: Phantom, rng: np.random.Generator, kinds: tuple[str, ...] | None) -> list[Lesion]:
    wanted = _draw_kinds(rng) if kinds is None else kinds
    # Malignant lesions first, so that they get the best room; ids keep the drawn order.
    lesions: list[Lesion] = []
    shapes: list[Ellipsoid] = []
    for lid, kind in enumerate(wanted, start=1):
        les = _one_lesion(ph, rng, lid, kind, shapes)
        if les is None:
            logger.warning("no room for lesion %d (%s) in this gland; left out", lid, kind)
            continue
        lesions.append(les)
        shapes.append(les.shape)
    return lesions


def _one_lesion(
    ph: Phantom, rng: np.random.Generator, lid: int, kind: str, others: list[Ellipsoid]
) -> Lesion | None:
    zone = {
        "cspca": "pz" if rng.random() < 0.7 else "tz",
        "indolent": "pz" if rng.random() < 0.8 else "tz",
    }.get(kind, "tz" if kind == "bph" else "pz")
    if kind == "cspca":
        isup = int(rng.choice([2, 3, 4, 5], p=[0.45, 0.3, 0.12, 0.13]))
        r = max(3.6, _radius_for(rng.uniform(0.25, 2.2)))
        radii = r * rng.uniform(0.8, 1.25, 3)
        adc = {2: 950.0, 3: 880.0, 4: 800.0, 5: 745.0}[isup] + rng.uniform(-40, 40)
        props = (rng.uniform(0.20, 0.30), adc, rng.uniform(0.65, 0.8), 1.6, 12.0, 400.0)
        irregular, pirads = 0.22, int(rng.choice([4, 5], p=[0.5, 0.5]))
    elif kind == "indolent":
        isup = 1
        r = max(3.6, _radius_for(rng.uniform(0.15, 0.6)))
        radii = r * rng.uniform(0.85, 1.15, 3)
        props = (rng.uniform(0.40, 0.50), rng.uniform(1100, 1300), 0.68, 0.9, 35.0, 1500.0)
        irregular, pirads = 0.1, int(rng.choice([3, 4], p=[0.6, 0.4]))
    elif kind == "bph":
        isup = 0
        r = max(4.0, _radius_for(rng.uniform(0.3, 1.8)))
        radii = r * rng.uniform(0.9, 1.1, 3)
        props = (0.5, 1350.0, 0.6, 1.3, 18.0, 800.0)
        irregular, pirads = 0.03, int(rng.choice([2, 3], p=[0.6, 0.4]))
    else:  # prostatitis: a flat band along the capsule
        isup = 0
        radii = np.array([rng.uniform(9, 14), rng.uniform(2.8, 4.0), rng.uniform(6, 10)])
        props = (rng.uniform(0.45, 0.55), rng.uniform(1250, 1400), 0.65, 1.1, 25.0, 1200.0)
        irregular, pirads = 0.15, 3
    for attempt in range(600):
        if attempt and attempt % 150 == 0:  # crowded gland: try a smaller lesion
            radii = np.maximum(np.asarray(radii) * 0.8, 2.5 if kind == "prostatitis" else 3.6)
        u = rng.uniform(-1, 1, 3)
        if u @ u > 1:
            continue
        p = ph.gland_centre + np.asarray(ph.gland.rotation) @ (u * np.asarray(ph.gland.radii))
        pts = p[None, :]
        qg = float(np.linalg.norm(ph.gland.local(pts)))
        qt = float(np.linalg.norm(ph.tz.local(pts)))
        if qg > 0.82:
            continue
        if zone == "pz" and (qt < 1.12 or float(ph.gland.local(pts)[0, 1]) < -0.6):
            continue
        if zone == "tz" and qt > 0.75:
            continue
        if any(
            np.linalg.norm(p - np.asarray(o.centre)) < o.bounding_radius() + max(radii) + 1.5 for o in others
        ):
            continue
        if kind == "prostatitis":
            # Orient the band tangentially: its thin axis along the radial direction from the gland centre.
            radial = p - ph.gland_centre
            radial /= np.linalg.norm(radial) + 1e-9
            t1 = np.cross(radial, [0.0, 0.0, 1.0])
            t1 /= np.linalg.norm(t1) + 1e-9
            rot = np.stack([t1, radial, np.cross(t1, radial)], axis=1)
        else:
            rot = _random_rotation(rng)
        shape = Ellipsoid(
            (float(p[0]), float(p[1]), float(p[2])),
            (float(radii[0]), float(radii[1]), float(radii[2])),
            _rot_tuple(rot),
            irregular,
            _waves(rng),
        )
        t2, adc_v, s0, enh, tin, tout = (float(v) for v in props)
        return Lesion(lid, kind, isup, zone, pirads, shape, t2, adc_v, s0, enh, tin, tout)
    return None


def build_phantom(plan: CasePlan) -> Phantom:
    """Build the phantom of a case (depends only on the plan's seed, case index and lesion kinds)."""
    ph = Phantom(plan)
    logger.debug(
        "phantom: gland %.1f ml at %s, %d lesion(s)",
        ph.gland_volume_ml(),
        np.round(ph.gland_centre, 1),
        len(ph.lesions),
    )
    return ph
