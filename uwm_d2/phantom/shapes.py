"""The phantom's shapes in millimetres, and the nominal frame organs are placed in.

Coordinates are millimetres: x to the image's right (the patient's left, as radiologists view
axial slices), y down the image (posterior), z up (towards the head); ``(0, 0)`` in-plane is the
body's centre. Two kinds of shape make up everything:

* :class:`Ellipsoid`: solid organs (liver, spleen, kidneys, bladder, bones, lungs, heart);
* :class:`Tube`: a union of spheres along a smooth curve, each sphere with an outer radius, a lumen
  radius and per-sphere contents. Bowel, vessels, the pancreas and the psoas muscles are tubes.
  Several tubes concatenate into one (a union of spheres is a union of spheres), so the whole
  small bowel is a single :class:`Tube` and slicing it is one vectorized test per slice.

Organ placement is written in a *nominal* cavity frame (the abdominal cavity of an average body,
x in [-135, 135] mm, y in [-90, 76] mm) and a relative height ``u`` (0 = the bottom of the band
holding the labelled organs, 1 = its top); :class:`Frame` maps both onto one case's body.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

# The nominal cavity frame (see the module docstring): its half-width and y range in mm.
_CAVITY_HALF_WIDTH = 135.0
_CAVITY_Y = (-90.0, 76.0)


@dataclass(frozen=True)
class Ellipsoid:
    """An ellipsoid in mm (x right, y down = posterior, z up), rotated by ``angle`` deg in-plane."""

    center: tuple[float, float, float]
    radii: tuple[float, float, float]
    angle: float = 0.0


@dataclass(frozen=True)
class Tube:
    """A union of spheres, one row per sphere.

    Attributes:
        points: ``(N, 3)`` centres in mm.
        outer: outer radius (mm) of each sphere: the organ's extent.
        lumen: lumen radius (mm); 0 = solid. Outer minus lumen is the wall.
        content: relative signal of the lumen's contents (of the whole sphere when solid).
        mottle: amplitude of the grain texture added to the contents (stool, food).
        hollow: ``True`` where the lumen is *not* part of the label (the wall-only colon trap).
    """

    points: np.ndarray
    outer: np.ndarray
    lumen: np.ndarray
    content: np.ndarray
    mottle: np.ndarray
    hollow: np.ndarray

    def __len__(self) -> int:
        return len(self.outer)


def _catmull_rom(control: np.ndarray, samples_per_segment: int = 24) -> np.ndarray:
    """A smooth curve through ``control`` (K, C) points (end points repeated as phantoms)."""
    if len(control) == 1:
        return control.copy()
    padded = np.concatenate([control[:1], control, control[-1:]], axis=0)
    t = np.linspace(0.0, 1.0, samples_per_segment, endpoint=False)[:, None]
    p0, p1, p2, p3 = padded[:-3], padded[1:-2], padded[2:-1], padded[3:]
    # One (segments, samples, C) evaluation instead of a Python loop over segments.
    t = t[None]
    p0, p1, p2, p3 = (p[:, None, :] for p in (p0, p1, p2, p3))
    curve = 0.5 * (
        2 * p1
        + (-p0 + p2) * t
        + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t**2
        + (-p0 + 3 * p1 - 3 * p2 + p3) * t**3
    )
    return np.concatenate([curve.reshape(-1, control.shape[1]), control[-1:]], axis=0)


def make_tube(
    control: np.ndarray,
    outer: Sequence[float] | np.ndarray,
    lumen: Sequence[float] | np.ndarray | None = None,
    content: Sequence[float] | np.ndarray | float = 0.0,
    mottle: Sequence[float] | np.ndarray | float = 0.0,
    hollow: Sequence[float] | np.ndarray | float = 0.0,
    step: float | None = None,
    haustra: tuple[float, float] | None = None,
) -> Tube:
    """Resample a Catmull-Rom curve through ``control`` (K, 3) mm into spheres ``step`` mm apart.

    Per-control attributes follow the curve (``hollow`` is interpolated and thresholded at 0.5).
    ``step`` defaults to 40% of the smallest radius, so neighbouring spheres overlap into a
    continuous tube (and a continuous lumen). ``haustra`` = ``(period_mm, depth)`` modulates the
    outer radius along the arc, the colon's haustral bulges.
    """
    count = len(control)

    def column(value: Sequence[float] | np.ndarray | float | None) -> np.ndarray:
        array = np.asarray(0.0 if value is None else value, dtype=float)
        return np.broadcast_to(array, (count,)).astype(float)

    outer_c = column(outer)
    columns = np.column_stack(
        [control, outer_c, column(lumen), column(content), column(mottle), column(hollow)]
    )
    dense = _catmull_rom(columns)
    xyz = dense[:, :3]
    arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(xyz, axis=0), axis=1))])
    if step is None:
        step = float(np.clip(0.4 * outer_c.min(), 0.7, 3.0))
    positions = np.arange(0.0, arc[-1] + 1e-9, step)
    values = [np.interp(positions, arc, dense[:, k]) for k in range(dense.shape[1])]
    radius = np.maximum(values[3], 0.5)
    if haustra is not None:
        period, depth = haustra
        radius = radius * (1.0 + depth * np.sin(2 * math.pi * positions / period))
    return Tube(
        points=np.column_stack(values[:3]),
        outer=radius,
        lumen=np.clip(values[4], 0.0, np.maximum(radius - 0.8, 0.0)),
        content=values[5],
        mottle=np.maximum(values[6], 0.0),
        hollow=values[7] > 0.5,
    )


def join_tubes(tubes: Sequence[Tube]) -> Tube:
    """One :class:`Tube` holding every sphere of ``tubes`` (a union of unions of spheres)."""
    if not tubes:
        empty = np.zeros(0)
        return Tube(np.zeros((0, 3)), empty, empty, empty, empty, np.zeros(0, dtype=bool))
    return Tube(
        points=np.concatenate([tube.points for tube in tubes]),
        outer=np.concatenate([tube.outer for tube in tubes]),
        lumen=np.concatenate([tube.lumen for tube in tubes]),
        content=np.concatenate([tube.content for tube in tubes]),
        mottle=np.concatenate([tube.mottle for tube in tubes]),
        hollow=np.concatenate([tube.hollow for tube in tubes]),
    )


def smooth_warp(
    rng: np.random.Generator, amplitude: float, wavelength: tuple[float, float], modes: int = 3
) -> Callable[[np.ndarray], np.ndarray]:
    """A random smooth displacement of (N, 3) points: a few plane waves per axis."""
    directions = rng.normal(size=(3, modes, 3))
    directions /= np.linalg.norm(directions, axis=-1, keepdims=True)
    waves = directions * (2 * math.pi / rng.uniform(*wavelength, size=(3, modes, 1)))
    phases = rng.uniform(0, 2 * math.pi, size=(3, modes))
    amplitudes = amplitude * rng.uniform(0.5, 1.0, size=(3, modes)) / math.sqrt(modes)

    def warp(points: np.ndarray) -> np.ndarray:
        # (N, 3 axes, modes): the displacement of each axis is a sum of its modes.
        phase = np.einsum("amk,nk->nam", waves, points) + phases
        return points + (amplitudes * np.sin(phase)).sum(axis=-1)

    return warp


class Frame:
    """Maps the nominal cavity frame and relative heights onto one case's body."""

    def __init__(
        self, cavity_x: float, cavity_y: tuple[float, float], z0: float, length: float
    ) -> None:
        self.sx = cavity_x / _CAVITY_HALF_WIDTH
        self.sy = (cavity_y[1] - cavity_y[0]) / (_CAVITY_Y[1] - _CAVITY_Y[0])
        self.y0 = cavity_y[0]
        self.z0, self.length = z0, length
        #: isotropic size factor for radii
        self.size = math.sqrt(self.sx * self.sy)

    def x(self, value: float | np.ndarray) -> float | np.ndarray:
        return value * self.sx

    def y(self, value: float | np.ndarray) -> float | np.ndarray:
        return self.y0 + (value - _CAVITY_Y[0]) * self.sy

    def z(self, u: float | np.ndarray) -> float | np.ndarray:
        return self.z0 + u * self.length

    def point(self, x: float, y: float, u: float) -> np.ndarray:
        return np.array([self.x(x), self.y(y), self.z(u)], dtype=float)

    def ellipsoid(
        self, x: float, y: float, u: float, radii: tuple[float, float, float], angle: float = 0.0
    ) -> Ellipsoid:
        """An ellipsoid at nominal ``(x, y)``, height ``u``; in-plane radii scale with the body."""
        center = (float(self.x(x)), float(self.y(y)), float(self.z(u)))
        return Ellipsoid(center, (radii[0] * self.sx, radii[1] * self.sy, radii[2]), angle)
