"""Synthetic abdominal MRI in the competition's exact layout, for tests, benchmarks and the demo.

:func:`make_phantom` writes a complete data root: ``train.csv``, ``train/``, ``test/``,
``sample_submission.csv`` (empty predictions) and ``test_truth.csv`` (the labels of ``test/``).
Each case is one random anatomy drawn in millimetres and sliced axially:

* an elliptical body: bright subcutaneous fat, a dark muscle wall, a textured visceral cavity,
  a spine with paraspinal muscles, liver, spleen, kidneys, lung bases, bladder;
* the three labelled organs: a stomach (a few ellipsoids, gas above fluid), a large bowel that is
  a hollow tube along the colon frame (its mask is the *wall*, so cross-sections are rings with a
  hole where the lumen is; the rectum and sigmoid are collapsed, i.e. solid) and small-bowel loops
  (random tortuous tubes, filled);
* organs occupy only a band of the z range, so about half of the slices carry no label, as in the
  real data.

Tubes are unions of spheres along a resampled curve, so a slice of one is a union of discs drawn
with OpenCV at sub-pixel precision; masks and intensities come from the same drawings, so the
labels are exact. Intensities are 16-bit (thousands), blurred slightly, multiplied by a smooth
bias field and corrupted with Rician noise (the magnitude of complex Gaussian noise, as MRI is).

Scan sizes and spacings are the competition's (266x266, 360x310 W x H, 276x276 at 1.63 mm, 234x234;
144 or 80 slices). Later days of a case reuse its anatomy, shifted and smoothly deformed a little.
Everything is deterministic for a seed (byte-identical files), and case-days render in parallel
worker processes, each seeded from ``(seed, case, day)``.
"""

from __future__ import annotations

import math
import multiprocessing
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from uwm_d2.core.atomic import atomic_write_text
from uwm_d2.core.errors import UWMInputError
from uwm_d2.core.ids import CLASSES, format_scan_name, format_slice_id
from uwm_d2.core.io import write_scan
from uwm_d2.core.rle import rle_encode


@dataclass(frozen=True)
class ScanGeometry:
    """Pixel grid of one case: ``width x height`` pixels of ``spacing`` mm, ``num_slices`` deep."""

    width: int
    height: int
    spacing: float
    num_slices: int


#: The competition's scan geometries (W x H; the array is (H, W)) and how often each is drawn.
GEOMETRIES: dict[str, ScanGeometry] = {
    "266x266": ScanGeometry(266, 266, 1.50, 144),
    "360x310": ScanGeometry(360, 310, 1.50, 144),
    "276x276": ScanGeometry(276, 276, 1.63, 80),
    "234x234": ScanGeometry(234, 234, 1.50, 144),
}
_GEOMETRY_WEIGHTS = np.array([0.55, 0.2, 0.1, 0.15])

#: Every anatomy is laid out along a canonical 432 mm (144 slices x 3 mm) axis; a scan with fewer
#: slices samples the same anatomy more coarsely, so organs keep their share of the slices.
_Z_EXTENT_MM = 432.0
#: Fixed-point bits for OpenCV drawing (coordinates in 1/16 pixel).
_SHIFT = 4
_ONE = 1 << _SHIFT
#: Largest case number of the real data; phantom case numbers are drawn from 1.._MAX_CASE.
_MAX_CASE = 156

# Mean tissue intensities (before the per-case scale, the bias field and the noise).
_FAT, _MUSCLE, _VISCERA, _LIVER, _SPLEEN, _KIDNEY = 8500.0, 2200.0, 4800.0, 3000.0, 3800.0, 4300.0
_BLADDER, _LUNG, _MARROW, _CORTEX, _CSF = 10500.0, 250.0, 2600.0, 700.0, 9000.0
_STOMACH_FLUID, _GAS, _GUT_WALL, _SB_FLUID = 7200.0, 500.0, 2800.0, 8600.0


@dataclass(frozen=True)
class Ellipsoid:
    """An ellipsoid in mm (x right, y down = posterior, z up), rotated by ``angle`` deg in-plane."""

    center: tuple[float, float, float]
    radii: tuple[float, float, float]
    angle: float = 0.0


@dataclass(frozen=True)
class Tube:
    """A union of spheres: ``points`` (N, 3) mm, outer radius and lumen radius (0 = solid) each."""

    points: np.ndarray
    outer: np.ndarray
    inner: np.ndarray


@dataclass(frozen=True)
class Anatomy:
    """One case-day's anatomy in mm, body-centred (image right = patient left, as radiologists)."""

    body_axes: tuple[float, float]
    body_center: tuple[float, float]
    fat: float
    muscle: float
    body_wobble: tuple[float, float]
    stomach: tuple[Ellipsoid, ...]
    gas_level: float
    colon: Tube
    small_bowel: tuple[Tube, ...]
    liver: tuple[Ellipsoid, ...]
    spleen: Ellipsoid
    kidneys: tuple[Ellipsoid, ...]
    lungs: tuple[Ellipsoid, ...]
    bladder: Ellipsoid
    femoral_heads: tuple[Ellipsoid, ...]
    tissue_gain: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class CaseDayJob:
    """Everything one worker needs to render and write one case-day."""

    out: str
    split: str
    seed: int
    case: int
    day: int
    day_index: int
    geometry: ScanGeometry
    num_slices: int


@dataclass(frozen=True)
class PhantomSummary:
    """What :func:`make_phantom` wrote."""

    root: Path
    train_case_days: tuple[str, ...]
    test_case_days: tuple[str, ...]
    train_slices: int
    test_slices: int
    labelled_slices: int
    geometries: dict[str, str]

    def lines(self) -> list[str]:
        """A short human-readable report."""
        total = self.train_slices + self.test_slices
        empty = 1.0 - self.labelled_slices / total if total else 0.0
        sizes = sorted({name for name in self.geometries.values()})
        return [
            f"phantom data root: {self.root}",
            f"train: {len(self.train_case_days)} case-days, {self.train_slices} slices",
            f"test:  {len(self.test_case_days)} case-days, {self.test_slices} slices",
            f"slices without any organ: {empty:.0%}; scan sizes (W x H): {', '.join(sizes)}",
        ]


# ----------------------------------------------------------------------------------------------
# Anatomy


def _catmull_rom(control: np.ndarray, samples_per_segment: int = 40) -> np.ndarray:
    """A smooth curve through ``control`` (K, C) points (end points repeated as phantoms)."""
    padded = np.concatenate([control[:1], control, control[-1:]], axis=0)
    t = np.linspace(0.0, 1.0, samples_per_segment, endpoint=False)[:, None]
    pieces = []
    for i in range(1, len(padded) - 2):
        p0, p1, p2, p3 = padded[i - 1], padded[i], padded[i + 1], padded[i + 2]
        pieces.append(
            0.5
            * (
                2 * p1
                + (-p0 + p2) * t
                + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t**2
                + (-p0 + 3 * p1 - 3 * p2 + p3) * t**3
            )
        )
    pieces.append(control[-1:])
    return np.concatenate(pieces, axis=0)


def _make_tube(control: np.ndarray, outer: np.ndarray, inner: np.ndarray, step: float) -> Tube:
    """Resample a Catmull-Rom curve through ``control`` (K, 3) mm every ``step`` mm of arc.

    Radii are given per control point and follow the curve; ``step`` must stay well below the lumen
    radius so that neighbouring spheres overlap into a continuous tube (and a continuous hole).
    """
    dense = _catmull_rom(np.column_stack([control, outer, inner]))
    xyz = dense[:, :3]
    arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(xyz, axis=0), axis=1))])
    positions = np.arange(0.0, arc[-1] + 1e-9, step)
    columns = [np.interp(positions, arc, dense[:, k]) for k in range(dense.shape[1])]
    points = np.column_stack(columns[:3])
    return Tube(points, np.maximum(columns[3], 0.5), np.maximum(columns[4], 0.0))


def _case_anatomy(seed: int, case: int, geometry: ScanGeometry) -> Anatomy:
    """Draw the anatomy of one case (the same for all its days before :func:`_deform`)."""
    rng = np.random.default_rng([seed, case, 0xA7])
    half_fov = 0.5 * min(geometry.width, geometry.height) * geometry.spacing
    axis_x, axis_y = rng.uniform(145, 180), rng.uniform(100, 125)
    # Shrink everything for small fields of view so the body stays (mostly) inside the image.
    scale = min(1.0, 0.93 * half_fov / (axis_x * 1.06 + 8))
    sx, sy = scale * axis_x / 150.0, scale * axis_y / 110.0
    # The labelled organs live between z0 and z1; above are liver/spleen/lungs, below the pelvis.
    z0 = rng.uniform(0.22, 0.29) * _Z_EXTENT_MM
    z1 = rng.uniform(0.64, 0.70) * _Z_EXTENT_MM

    def z_at(u: float) -> float:
        return z0 + u * (z1 - z0)

    def jitter(sd: float) -> float:
        return float(rng.normal(0.0, sd))

    # Colon frame from the rectum (in front of the sacrum) up the left (image right), across, and
    # down the right to the caecum; radii (outer, lumen) in mm. The rectum and sigmoid are
    # collapsed (lumen 0).
    frame = [
        (0, -5, -0.02, 15, 0),
        (3, -8, 0.06, 16, 0),
        (30, 2, 0.14, 16, 0),
        (55, 8, 0.22, 17, 4),
        (75, 20, 0.36, 19, 8),
        (78, 25, 0.60, 20, 9),
        (72, 12, 0.84, 21, 10),
        (60, -22, 0.95, 22, 11),
        (25, -55, 0.88, 23, 12),
        (-10, -62, 0.82, 23, 12),
        (-45, -45, 0.86, 24, 13),
        (-70, -10, 0.90, 25, 14),
        (-76, 15, 0.70, 26, 15),
        (-72, 20, 0.46, 27, 16),
        (-62, 14, 0.30, 28, 17),
    ]
    control = np.array(
        [
            (sx * (x + jitter(5)), sy * (y + jitter(5)), z_at(u + jitter(0.02)))
            for x, y, u, _, _ in frame
        ]
    )
    size = rng.uniform(0.85, 1.15) * scale
    outer = np.array([r for *_, r, _ in frame], dtype=float) * size
    inner = np.array([r for *_, r in frame], dtype=float) * size
    colon = _make_tube(control, outer, inner, step=2.0)

    loops = []
    for _ in range(int(rng.integers(4, 8))):
        center = np.array([rng.uniform(-40, 40), rng.uniform(-35, 25), rng.uniform(0.08, 0.6)])
        count = int(rng.integers(6, 10))
        offsets = rng.normal(0.0, [22.0, 18.0, 0.07], size=(count, 3))
        points = center + offsets
        control = np.column_stack(
            [sx * points[:, 0], sy * points[:, 1], z0 + points[:, 2] * (z1 - z0)]
        )
        radius = rng.uniform(8, 12) * scale
        loops.append(
            _make_tube(control, np.full(count, radius), np.zeros(count), step=min(2.0, radius / 3))
        )

    stomach_size = rng.uniform(0.8, 1.2) * scale
    stomach = (
        Ellipsoid((sx * 55, sy * -35, z_at(0.80)), _scaled((42, 30, 45), stomach_size), -20),
        Ellipsoid((sx * 65, sy * -12, z_at(0.93)), _scaled((35, 30, 35), stomach_size), 10),
        Ellipsoid((sx * 20, sy * -52, z_at(0.72)), _scaled((32, 17, 25), stomach_size), 15),
    )
    gain_names = ("fat", "muscle", "viscera", "liver", "stomach", "colon", "small_bowel", "lumen")
    return Anatomy(
        body_axes=(scale * axis_x, scale * axis_y),
        body_center=(jitter(6), jitter(6)),
        fat=rng.uniform(10, 26) * scale,
        muscle=rng.uniform(7, 12) * scale,
        body_wobble=(rng.uniform(0.03, 0.07), rng.uniform(0, 2 * math.pi)),
        stomach=stomach,
        gas_level=rng.uniform(-0.6, 0.2),
        colon=colon,
        small_bowel=tuple(loops),
        liver=(
            Ellipsoid((sx * -62, sy * -5, z_at(1.05)), (sx * 58, sy * 55, 80), 10),
            Ellipsoid((sx * -5, sy * -48, z_at(1.02)), (sx * 40, sy * 20, 45), 0),
        ),
        spleen=Ellipsoid((sx * 85, sy * 45, z_at(0.98)), (sx * 30, sy * 42, 50), -30),
        kidneys=(
            Ellipsoid((sx * -60, sy * 50, z_at(0.72)), (sx * 26, sy * 34, 55), 25),
            Ellipsoid((sx * 60, sy * 50, z_at(0.75)), (sx * 26, sy * 34, 55), -25),
        ),
        lungs=(
            Ellipsoid((sx * -70, sy * 35, z_at(1.45)), (sx * 60, sy * 60, 90)),
            Ellipsoid((sx * 70, sy * 35, z_at(1.45)), (sx * 60, sy * 60, 90)),
        ),
        bladder=Ellipsoid((0.0, sy * -25, z_at(-0.35)), (sx * 45, sy * 35, 40)),
        femoral_heads=(
            Ellipsoid((sx * -95, sy * 10, z_at(-0.55)), (scale * 24,) * 3),
            Ellipsoid((sx * 95, sy * 10, z_at(-0.55)), (scale * 24,) * 3),
        ),
        tissue_gain={name: float(rng.uniform(0.85, 1.15)) for name in gain_names},
    )


def _scaled(radii: tuple[float, float, float], factor: float) -> tuple[float, float, float]:
    return (radii[0] * factor, radii[1] * factor, radii[2] * factor)


def _deform(anatomy: Anatomy, rng: np.random.Generator) -> Anatomy:
    """The same anatomy on a later day: shifted, smoothly displaced, the stomach filled anew."""
    shift = np.array([rng.normal(0, 4), rng.normal(0, 4), rng.normal(0, 6)])
    amplitude = rng.uniform(2.0, 4.0)
    wave = rng.uniform(1 / 90, 1 / 50, size=(3, 3)) * rng.choice([-1, 1], size=(3, 3))
    phase = rng.uniform(0, 2 * math.pi, size=3)

    def move(points: np.ndarray) -> np.ndarray:
        # A smooth displacement field (one sine per axis), so neighbouring points move together.
        return points + shift + amplitude * np.sin(points @ wave.T + phase)

    def move_tube(tube: Tube) -> Tube:
        return replace(tube, points=move(tube.points))

    def move_ellipsoid(item: Ellipsoid, factor: float = 1.0) -> Ellipsoid:
        center = tuple(float(v) for v in move(np.array([item.center]))[0])
        return replace(item, center=center, radii=_scaled(item.radii, factor))

    filling = rng.uniform(0.9, 1.1)
    return replace(
        anatomy,
        body_center=(anatomy.body_center[0] + shift[0], anatomy.body_center[1] + shift[1]),
        stomach=tuple(move_ellipsoid(item, filling) for item in anatomy.stomach),
        gas_level=anatomy.gas_level + rng.normal(0, 0.1),
        colon=move_tube(anatomy.colon),
        small_bowel=tuple(move_tube(loop) for loop in anatomy.small_bowel),
        liver=tuple(move_ellipsoid(item) for item in anatomy.liver),
        spleen=move_ellipsoid(anatomy.spleen),
        kidneys=tuple(move_ellipsoid(item) for item in anatomy.kidneys),
        bladder=move_ellipsoid(anatomy.bladder, rng.uniform(0.8, 1.2)),
    )


# ----------------------------------------------------------------------------------------------
# Rendering


class _Canvas:
    """Maps body-centred mm to pixels of one geometry and rasterizes shapes into uint8 masks."""

    def __init__(self, geometry: ScanGeometry, center_mm: tuple[float, float]) -> None:
        self.shape = (geometry.height, geometry.width)
        self.spacing = geometry.spacing
        self.origin = (
            (geometry.width - 1) / 2 + center_mm[0] / geometry.spacing,
            (geometry.height - 1) / 2 + center_mm[1] / geometry.spacing,
        )

    def blank(self) -> np.ndarray:
        return np.zeros(self.shape, dtype=np.uint8)

    def _point(self, x: float, y: float) -> tuple[int, int]:
        px = self.origin[0] + x / self.spacing
        py = self.origin[1] + y / self.spacing
        return round(float(px) * _ONE), round(float(py) * _ONE)

    def ellipse(
        self, mask: np.ndarray, x: float, y: float, ax: float, ay: float, angle: float = 0.0
    ) -> None:
        """Fill an ellipse with semi-axes ``ax``, ``ay`` mm."""
        axes = (round(float(ax) / self.spacing * _ONE), round(float(ay) / self.spacing * _ONE))
        cv2.ellipse(mask, self._point(x, y), axes, angle, 0, 360, 1, -1, cv2.LINE_8, _SHIFT)

    def ellipsoid(self, mask: np.ndarray, item: Ellipsoid, z: float) -> bool:
        """Fill the cross-section of ``item`` at height ``z``; ``False`` if the plane misses it."""
        (cx, cy, cz), (rx, ry, rz) = item.center, item.radii
        fraction = 1.0 - ((z - cz) / rz) ** 2
        if fraction <= 0.0:
            return False
        root = math.sqrt(fraction)
        self.ellipse(mask, cx, cy, rx * root, ry * root, item.angle)
        return True

    def tube(self, mask: np.ndarray, tube: Tube, z: float, lumen: bool = False) -> None:
        """Fill the cross-section of the tube's outer surface (or of its lumen) at ``z``."""
        radius = tube.inner if lumen else tube.outer
        dz = tube.points[:, 2] - z
        hit = np.flatnonzero(np.abs(dz) < radius)
        if hit.size == 0:
            return
        # The sphere of radius r at height offset dz cuts the plane in a disc of sqrt(r² - dz²).
        discs = np.sqrt(radius[hit] ** 2 - dz[hit] ** 2) / self.spacing
        centers = tube.points[hit, :2] / self.spacing + np.array(self.origin)
        centers = np.round(centers * _ONE).astype(np.int64)
        radii = np.round(discs * _ONE).astype(np.int64)
        for (px, py), r in zip(centers.tolist(), radii.tolist(), strict=True):
            cv2.circle(mask, (px, py), r, 1, -1, cv2.LINE_8, _SHIFT)

    def polygon(self, mask: np.ndarray, xy: np.ndarray) -> None:
        pixels = xy / self.spacing + np.array(self.origin)
        cv2.fillPoly(mask, [np.round(pixels * _ONE).astype(np.int32)], 1, cv2.LINE_8, _SHIFT)


def _body_outline(ax: float, ay: float, inset: float) -> np.ndarray:
    """A superellipse (boxier than an ellipse, flatter at the back), shrunk by ``inset`` mm."""
    theta = np.linspace(0.0, 2 * math.pi, 180, endpoint=False)
    cos, sin = np.cos(theta), np.sin(theta)
    exponent = 2.0 / 2.5
    x = (ax - inset) * np.sign(cos) * np.abs(cos) ** exponent
    y = (ay - inset) * np.sign(sin) * np.abs(sin) ** exponent
    y = np.where(y > 0, y * 0.88, y)  # the back lies flat on the table
    return np.column_stack([x, y])


def _field_slice(coarse: np.ndarray, t: float, shape: tuple[int, int]) -> np.ndarray:
    """Interpolate the coarse noise volume at relative height ``t`` and upsample to ``shape``."""
    position = t * (coarse.shape[0] - 1)
    below = min(int(position), coarse.shape[0] - 2)
    weight = position - below
    plane = (1 - weight) * coarse[below] + weight * coarse[below + 1]
    return cv2.resize(plane, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC)


def _render_slice(
    anatomy: Anatomy,
    canvas: _Canvas,
    z: float,
    t: float,
    textures: tuple[np.ndarray, np.ndarray],
    row_grid: np.ndarray,
    lumen_level: float,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """One slice's noiseless intensity (float32) and its three label masks (uint8)."""
    gain = anatomy.tissue_gain
    wobble = 1.0 + anatomy.body_wobble[0] * math.sin(
        2 * math.pi * 1.3 * z / _Z_EXTENT_MM + anatomy.body_wobble[1]
    )
    ax, ay = anatomy.body_axes[0] * wobble, anatomy.body_axes[1] * wobble
    body, wall, cavity = canvas.blank(), canvas.blank(), canvas.blank()
    canvas.polygon(body, _body_outline(ax, ay, 0.0))
    canvas.polygon(wall, _body_outline(ax, ay, anatomy.fat))
    canvas.polygon(cavity, _body_outline(ax, ay, anatomy.fat + anatomy.muscle))

    coarse_texture = _field_slice(textures[0], t, canvas.shape)
    fine_texture = _field_slice(textures[1], t, canvas.shape)
    image = np.zeros(canvas.shape, dtype=np.float32)
    image[body > 0] = _FAT * gain["fat"]
    image[wall > 0] = _MUSCLE * gain["muscle"]
    # Viscera: lean tissue mottled with brighter mesenteric fat, mixed by the smooth textures.
    fat_share = 1.0 / (1.0 + np.exp(-(1.8 * coarse_texture + 0.9 * fine_texture - 0.4)))
    viscera = (_VISCERA - 1200.0 + 2800.0 * fat_share) * gain["viscera"]
    inside = cavity > 0
    image[inside] = viscera[inside]

    def paint(items: Sequence[Ellipsoid], value: float) -> None:
        mask = canvas.blank()
        if any([canvas.ellipsoid(mask, item, z) for item in items]):
            image[(mask > 0) & inside] = value

    paint(anatomy.lungs, _LUNG)
    paint(anatomy.liver, _LIVER * gain["liver"])
    paint([anatomy.spleen], _SPLEEN)
    paint(anatomy.kidneys, _KIDNEY)
    paint([anatomy.bladder], _BLADDER)
    paint(anatomy.femoral_heads, _MARROW)

    # Small bowel: fluid-filled loops with a thin darker wall; filled masks.
    small = canvas.blank()
    for loop in anatomy.small_bowel:
        canvas.tube(small, loop, z)
    # Large bowel: the wall is labelled, the lumen (gas / stool) is a hole in the label.
    colon_outer, colon_lumen = canvas.blank(), canvas.blank()
    canvas.tube(colon_outer, anatomy.colon, z)
    canvas.tube(colon_lumen, anatomy.colon, z, lumen=True)
    stomach = canvas.blank()
    for item in anatomy.stomach:
        canvas.ellipsoid(stomach, item, z)

    # Spine and back muscles sit behind everything and are never part of an organ.
    spine = canvas.blank()
    back_y = (ay - anatomy.fat - anatomy.muscle) * 0.88  # the cavity's back edge, see outline
    vertebra_y = back_y - 48.0
    canvas.ellipse(spine, -34.0, back_y - 22.0, 24.0, 20.0, 10)
    canvas.ellipse(spine, 34.0, back_y - 22.0, 24.0, 20.0, -10)
    marrow = canvas.blank()
    canvas.ellipse(marrow, 0.0, vertebra_y, 20.0, 17.0)
    canal = canvas.blank()
    canvas.ellipse(canal, 0.0, vertebra_y + 27.0, 7.0, 6.0)
    blocked = (spine | marrow | canal) > 0
    allowed = inside & ~blocked

    stomach_mask = (stomach > 0) & allowed
    colon_mask = (colon_outer > 0) & allowed & ~stomach_mask
    large_mask = colon_mask & (colon_lumen == 0)
    small_mask = (small > 0) & allowed & ~stomach_mask & ~colon_mask

    if small_mask.any():
        core = cv2.erode(small_mask.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
        image[small_mask] = _GUT_WALL * 1.2 * gain["small_bowel"]
        image[core] = _SB_FLUID * gain["small_bowel"] * (1 + 0.05 * fine_texture[core])
    if colon_mask.any():
        image[colon_mask] = _GUT_WALL * gain["colon"]
        lumen = colon_mask & ~large_mask
        # Stool is mottled: the fine texture spreads it between gas-dark and fluid-bright.
        content = lumen_level * gain["lumen"] * (1 + 0.35 * fine_texture[lumen])
        image[lumen] = np.clip(content, _GAS, None)
    if stomach_mask.any():
        core = cv2.erode(stomach_mask.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
        image[stomach_mask] = _GUT_WALL * gain["stomach"]
        # Supine patient: gas floats up (anterior = top of the image), fluid lies below it.
        rows = np.flatnonzero(stomach_mask.any(axis=1))
        level = rows[0] + (0.5 + 0.5 * anatomy.gas_level) * (rows[-1] - rows[0])
        gas = core & (row_grid < level)
        image[core] = _STOMACH_FLUID * gain["stomach"]
        image[gas] = _GAS

    image[spine > 0] = _MUSCLE * gain["muscle"]
    image[marrow > 0] = _CORTEX
    inner_marrow = cv2.erode(marrow, np.ones((5, 5), np.uint8)) > 0
    image[inner_marrow] = _MARROW
    image[canal > 0] = _CSF
    masks = {
        "large_bowel": large_mask.astype(np.uint8),
        "small_bowel": small_mask.astype(np.uint8),
        "stomach": stomach_mask.astype(np.uint8),
    }
    return image, masks


def _render_case_day(job: CaseDayJob) -> list[tuple[str, str, str, str]]:
    """Render and write one case-day's PNGs; return ``(id, rle large, rle small, rle stomach)``."""
    cv2.setNumThreads(1)  # one process per case-day already uses every core
    geometry = job.geometry
    anatomy = _case_anatomy(job.seed, job.case, geometry)
    rng = np.random.default_rng([job.seed, job.case, job.day, 0xD1])
    if job.day_index > 0:
        anatomy = _deform(anatomy, rng)
    canvas = _Canvas(geometry, anatomy.body_center)
    height, width = canvas.shape
    textures = (
        rng.standard_normal((10, 6, 6)).astype(np.float32),
        rng.standard_normal((40, 40, 40)).astype(np.float32),
    )
    x_grid = np.linspace(-1.0, 1.0, width, dtype=np.float32)[None, :]
    y_grid = np.linspace(-1.0, 1.0, height, dtype=np.float32)[:, None]
    row_grid = np.broadcast_to(np.arange(height, dtype=np.float32)[:, None], (height, width))
    # Smooth multiplicative bias (coil sensitivity): exp of a random quadratic in x and y, times a
    # drift along z; computed once, it costs one multiplication per slice.
    a, b, c, d, e, drift = rng.normal(0.0, [0.2, 0.2, 0.15, 0.15, 0.1, 0.2])
    bias_plane = np.exp(
        a * x_grid + b * y_grid + c * x_grid**2 + d * y_grid**2 + e * x_grid * y_grid
    )
    scale = rng.uniform(0.5, 2.2)
    sigma = np.float32(rng.uniform(0.035, 0.06) * _VISCERA * scale)
    lumen_level = rng.uniform(600.0, 2500.0)
    folder = (
        Path(job.out) / job.split / f"case{job.case}" / f"case{job.case}_day{job.day}" / "scans"
    )
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for index in range(job.num_slices):
        t = (index + 0.5) / job.num_slices
        z = t * _Z_EXTENT_MM
        image, masks = _render_slice(anatomy, canvas, z, t, textures, row_grid, lumen_level)
        image = cv2.GaussianBlur(image, (0, 0), 0.6)  # partial-volume softening of the edges
        image *= bias_plane * np.float32(scale * math.exp(drift * t))
        # Rician noise: the magnitude of the signal plus complex Gaussian noise.
        noise = rng.standard_normal((2, height, width), dtype=np.float32)
        noise *= sigma
        noise[0] += image
        magnitude = np.hypot(noise[0], noise[1])
        pixels = np.clip(np.rint(magnitude), 0, 65535).astype(np.uint16)
        slice_number = index + 1
        name = format_scan_name(
            slice_number, geometry.width, geometry.height, geometry.spacing, geometry.spacing
        )
        write_scan(folder / name, pixels)
        rows.append(
            (
                format_slice_id(job.case, job.day, slice_number),
                *(rle_encode(masks[name]) for name in CLASSES),
            )
        )
    return rows


# ----------------------------------------------------------------------------------------------
# The data root


def _plan(
    rng: np.random.Generator,
    cases: int,
    test_cases: int,
    days_per_case: int | tuple[int, int],
    case_days: Mapping[int, Sequence[int]] | None,
) -> tuple[dict[int, list[int]], dict[int, list[int]], dict[int, str]]:
    """Choose case numbers, day numbers and geometries: ``(train, test, geometry name by case)``."""
    low, high = (days_per_case, days_per_case) if isinstance(days_per_case, int) else days_per_case
    if not 1 <= low <= high:
        raise UWMInputError(f"days per case must be >= 1, got {days_per_case}")

    def draw_days() -> list[int]:
        count = int(rng.integers(low, high + 1))
        first = int(rng.integers(0, 20))
        steps = rng.integers(1, 9, size=count - 1)
        return [first, *(first + np.cumsum(steps)).tolist()]

    if case_days is not None:
        train = {int(case): sorted(int(day) for day in days) for case, days in case_days.items()}
        if any(not days for days in train.values()):
            raise UWMInputError("every case in case_days needs at least one day")
        pool = np.setdiff1d(np.arange(1, _MAX_CASE + 1 + test_cases), list(train))
        test_numbers = sorted(rng.choice(pool, size=test_cases, replace=False).tolist())
    else:
        numbers = rng.choice(np.arange(1, _MAX_CASE + 1), size=cases + test_cases, replace=False)
        train = {int(case): draw_days() for case in sorted(numbers[:cases].tolist())}
        test_numbers = sorted(numbers[cases:].tolist())
    test = {int(case): draw_days() for case in test_numbers}
    names = list(GEOMETRIES)
    geometry = {}
    for group in (train, test):
        for position, case in enumerate(group):
            # The first case of each split is always non-square, so W/H mix-ups always show.
            choice = 1 if position == 0 else int(rng.choice(len(names), p=_GEOMETRY_WEIGHTS))
            geometry[case] = names[choice]
    return train, test, geometry


def make_phantom(
    out: str | os.PathLike,
    cases: int = 6,
    seed: int = 0,
    max_slices: int | None = None,
    days_per_case: int | tuple[int, int] = (1, 3),
    test_cases: int = 2,
    test_days_from_train: int = 1,
    case_days: Mapping[int, Sequence[int]] | None = None,
    workers: int | None = None,
    progress: bool = True,
) -> PhantomSummary:
    """Write a synthetic data root in the competition layout into the new or empty folder ``out``.

    Args:
        out: the data root to create; its parent must exist and it must be missing or empty.
        cases: number of training cases (ignored when ``case_days`` is given).
        seed: everything (case numbers, anatomy, noise) follows from it; same seed, same bytes.
        max_slices: cap on the slices per scan (144 or 80 otherwise); small values make tiny test
            data that still has empty slices above and below the organs.
        days_per_case: number of scan days of each case, or an inclusive ``(low, high)`` range.
        test_cases: cases seen only in ``test/`` (their labels go to ``test_truth.csv``).
        test_days_from_train: this many training cases with two or more days give their last day
            to ``test/``, as the real test set holds later days of some training cases.
        case_days: explicit ``{case: [day, ...]}`` of the training cases (e.g. to include a case-day
            listed as bad); unseen test cases are still drawn.
        workers: processes rendering case-days in parallel; ``None`` = ``os.cpu_count()``,
            1 renders in this process.
        progress: show a tqdm bar on a terminal.

    Returns:
        A :class:`PhantomSummary`.

    Raises:
        UWMInputError: bad counts, ``out``'s parent missing, or ``out`` not empty.
    """
    out = Path(out)
    if cases < 1 and case_days is None:
        raise UWMInputError(f"need at least one training case, got cases={cases}")
    if test_cases < 0 or test_days_from_train < 0:
        raise UWMInputError("test_cases and test_days_from_train must be >= 0")
    if workers is not None and workers < 1:
        raise UWMInputError(f"workers must be >= 1, got {workers}")
    if max_slices is not None and max_slices < 1:
        raise UWMInputError(f"max_slices must be >= 1, got {max_slices}")
    if not out.parent.is_dir():
        what = "is a file, not a folder" if out.parent.exists() else "does not exist"
        raise UWMInputError(f"the parent folder of {str(out)!r} {what}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UWMInputError(f"output folder {str(out)!r} is not empty (refusing to mix data roots)")

    rng = np.random.default_rng([seed, 0x5EED])
    train, test, geometry_names = _plan(rng, cases, test_cases, days_per_case, case_days)
    splits: dict[str, list[tuple[int, int, int]]] = {"train": [], "test": []}
    moved = 0
    for case, days in train.items():
        for day_index, day in enumerate(days):
            last = day_index == len(days) - 1
            split = "test" if last and len(days) > 1 and moved < test_days_from_train else "train"
            splits[split].append((case, day, day_index))
        moved += int(len(days) > 1 and moved < test_days_from_train)
    splits["test"].extend(
        (case, day, index) for case, days in test.items() for index, day in enumerate(days)
    )

    jobs = []
    for split, entries in splits.items():
        for case, day, day_index in entries:
            geometry = GEOMETRIES[geometry_names[case]]
            depth = (
                geometry.num_slices if max_slices is None else min(max_slices, geometry.num_slices)
            )
            jobs.append(CaseDayJob(str(out), split, seed, case, day, day_index, geometry, depth))
    out.mkdir(exist_ok=True)
    (out / "train").mkdir(exist_ok=True)
    (out / "test").mkdir(exist_ok=True)
    results = _run_jobs(jobs, workers, progress)

    labelled = 0
    tables: dict[str, list[str]] = {"train": [], "test": []}
    for job in sorted(jobs, key=lambda job: (job.split, job.case, job.day)):
        for slice_id, *rles in results[job]:
            labelled += any(rles)
            tables[job.split].extend(
                f"{slice_id},{name},{rle}" for name, rle in zip(CLASSES, rles, strict=True)
            )
    atomic_write_text(out / "train.csv", _csv("id,class,segmentation", tables["train"]))
    atomic_write_text(out / "test_truth.csv", _csv("id,class,segmentation", tables["test"]))
    blanks = [line.rsplit(",", 1)[0] + "," for line in tables["test"]]
    atomic_write_text(out / "sample_submission.csv", _csv("id,class,predicted", blanks))

    def case_day_names(split: str) -> tuple[str, ...]:
        return tuple(f"case{case}_day{day}" for case, day, _ in sorted(splits[split]))

    return PhantomSummary(
        root=out,
        train_case_days=case_day_names("train"),
        test_case_days=case_day_names("test"),
        train_slices=sum(job.num_slices for job in jobs if job.split == "train"),
        test_slices=sum(job.num_slices for job in jobs if job.split == "test"),
        labelled_slices=labelled,
        geometries={f"case{case}": name for case, name in sorted(geometry_names.items())},
    )


def _csv(header: str, lines: list[str]) -> str:
    return "\n".join([header, *lines]) + "\n"


def _run_jobs(
    jobs: list[CaseDayJob], workers: int | None, progress: bool
) -> dict[CaseDayJob, list[tuple[str, str, str, str]]]:
    """Render every case-day, in worker processes unless ``workers == 1``."""
    workers = min(workers or os.cpu_count() or 1, max(len(jobs), 1))
    bar = tqdm(
        total=sum(job.num_slices for job in jobs),
        unit="slice",
        desc="phantom",
        disable=None if progress else True,
    )
    results = {}
    with bar:
        if workers <= 1:
            for job in jobs:
                results[job] = _render_case_day(job)
                bar.update(job.num_slices)
            return results
        # spawn, not fork: OpenCV's thread pool does not survive a fork reliably.
        context = multiprocessing.get_context("spawn")
        # Largest jobs first, so no worker is left with a 144-slice scan at the end.
        ordered = sorted(jobs, key=lambda job: -job.num_slices * job.geometry.width)
        with ProcessPoolExecutor(workers, mp_context=context) as pool:
            futures = {pool.submit(_render_case_day, job): job for job in ordered}
            for future in as_completed(futures):
                job = futures[future]
                results[job] = future.result()
                bar.update(job.num_slices)
    return results
