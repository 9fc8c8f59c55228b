"""The phantom's anatomy in millimetres: shapes, one case's organs, and a later day's deformation.

Coordinates are millimetres: x to the image's right (the patient's left, as radiologists view
axial slices), y down the image (posterior), z up (towards the head) along a canonical
:data:`Z_EXTENT_MM` axis; ``(0, 0)`` in-plane is the body's centre.

Two kinds of shape make up everything:

* :class:`Ellipsoid`: solid organs (liver, spleen, kidneys, bladder, bones, lungs, heart);
* :class:`Tube`: a union of spheres along a smooth curve, each sphere with an outer radius, a lumen
  radius and per-sphere contents. Bowel, vessels, the pancreas and the psoas muscles are tubes.
  Several tubes concatenate into one (a union of spheres is a union of spheres), so the whole
  small bowel is a single :class:`Tube` and slicing it is one vectorized test per slice.

Organ placement is written in a *nominal* cavity frame (the abdominal cavity of an average body,
x in [-135, 135] mm, y in [-90, 76] mm) and a relative height ``u`` (0 = the bottom of the band
holding the labelled organs, 1 = its top); :func:`case_anatomy` maps both onto each case's body.
The small bowel is the hard part: a self-avoiding walk through a jittered 3D lattice packed into
the mid-abdomen, so that an axial slice cuts it into dozens of separate pieces, as a real one does.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

#: Every anatomy is laid out along a canonical 432 mm (144 slices x 3 mm) axis; a scan with fewer
#: slices samples the same anatomy more coarsely, so organs keep their share of the slices.
Z_EXTENT_MM = 432.0

#: Relative MR signal of each tissue (subcutaneous fat = 1), before the per-case jitter, the bias
#: field and the scan gain. The scans mimic the bright-fat, bright-fluid contrast of the real ones:
#: fluid, fat and blood are all bright, bowel wall is as dark as muscle and liver, so intensity
#: alone does not tell the organs from their surroundings.
TISSUE: dict[str, float] = {
    "fat": 1.0,
    "visceral_fat": 0.8,
    "muscle": 0.2,
    "liver": 0.3,
    "spleen": 0.46,
    "kidney": 0.56,
    "medulla": 0.38,
    "pancreas": 0.44,
    "fluid": 1.06,  # bladder, gallbladder, spinal fluid
    "blood": 0.94,  # inflowing blood is bright ...
    "flow_void": 0.1,  # ... or, in some vessels and cases, a dark flow void
    "lung": 0.04,
    "heart": 0.3,
    "marrow": 0.6,
    "bone": 0.06,
    "gas": 0.02,
    "gut_wall": 0.23,
    "cord": 0.36,
}

# The nominal cavity frame (see the module docstring): its half-width and y range in mm.
_CAVITY_HALF_WIDTH = 135.0
_CAVITY_Y = (-90.0, 76.0)

#: Small-bowel contents: signal range, grain amplitude, nominal outer radius range (mm), weight.
#: Fluid-filled loops are as bright as fat and vessels, collapsed ones as dark as muscle.
_SMALL_BOWEL_KINDS: dict[str, tuple[tuple[float, float], float, tuple[float, float], float]] = {
    "fluid": ((0.8, 1.05), 0.05, (6.0, 8.0), 0.42),
    "chyme": ((0.42, 0.62), 0.16, (5.0, 7.0), 0.33),
    "collapsed": ((0.19, 0.3), 0.03, (3.5, 5.0), 0.25),
}

#: Large-bowel contents: signal range, grain amplitude range, radius factor. Stool is mottled (the
#: grain texture spreads it between gas-dark and bright); gas-distended segments are drawn with the
#: label on the wall only, so their cross-sections are rings with a hole.
_COLON_KINDS: dict[str, tuple[tuple[float, float], tuple[float, float], float]] = {
    "stool": ((0.36, 0.52), (0.3, 0.42), 1.0),
    "fluid": ((0.75, 0.98), (0.06, 0.12), 1.0),
    "gas": ((0.02, 0.04), (0.0, 0.02), 1.18),
    "collapsed": ((0.2, 0.3), (0.04, 0.08), 0.62),
}

#: The colon frame, rectum first: nominal (x, y), relative height u, outer radius (mm), segment.
#: It frames the abdomen: ascending colon on the image's left (the patient's right), transverse
#: colon across the front and top, descending colon on the image's right, sigmoid and rectum low.
_COLON_FRAME: tuple[tuple[float, float, float, float, str], ...] = (
    (0, 44, -0.2, 13, "rectum"),
    (2, 38, -0.06, 14, "rectum"),
    (22, 16, 0.04, 14, "sigmoid"),
    (48, -24, 0.09, 14, "sigmoid"),
    (74, -6, 0.17, 15, "sigmoid"),
    (99, 16, 0.31, 17, "descending"),
    (103, 14, 0.55, 17, "descending"),
    (97, 6, 0.78, 18, "descending"),
    (88, -20, 0.92, 20, "transverse"),
    (54, -66, 0.8, 21, "transverse"),
    (0, -72, 0.66, 22, "transverse"),
    (-52, -68, 0.74, 23, "transverse"),
    (-90, -30, 0.84, 24, "ascending"),
    (-101, 0, 0.66, 25, "ascending"),
    (-101, 8, 0.44, 26, "ascending"),
    (-93, 0, 0.27, 28, "caecum"),
    (-80, -14, 0.18, 26, "caecum"),
)

#: The stomach's axis from the fundus (high, posterior, on the image's right) to the pylorus:
#: nominal (x, y), u, outer radius (mm). It sits in the top of the labelled band only.
_STOMACH_AXIS: tuple[tuple[float, float, float, float], ...] = (
    (70, 12, 1.06, 30),
    (62, -22, 0.92, 32),
    (36, -54, 0.8, 25),
    (2, -62, 0.74, 18),
    (-24, -50, 0.71, 11),
)

#: The duodenum's C-loop from the pylorus around the pancreatic head; labelled small bowel.
_DUODENUM: tuple[tuple[float, float, float], ...] = (
    (-24, -50, 0.71),
    (-44, -42, 0.67),
    (-54, -18, 0.6),
    (-46, -8, 0.5),
    (-16, -40, 0.45),
    (14, -42, 0.47),
    (32, -36, 0.55),
)

#: Where the small-bowel lattice lives: u range, and an in-plane ellipse (nominal centre, axes)
#: less the retroperitoneum (spine, great vessels, psoas, and the kidneys at their height).
_SMALL_BOWEL_U = (-0.12, 0.62)
_SMALL_BOWEL_CENTER = (0.0, -22.0)
_SMALL_BOWEL_AXES = (96.0, 70.0)
#: Lattice spacing (nominal mm): neighbouring loops sit this far apart, centre to centre, so
#: a few millimetres of mesenteric fat separate most of them.
_LATTICE_MM = 17.0
#: How far (in lattice spacings) a loop meanders off the straight line between two cells.
_KINK = 0.12


def _small_bowel_region(x: np.ndarray, y: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Whether nominal points ``(x, y)`` at heights ``u`` lie in the small bowel's space."""
    # Narrower in the pelvis, tapering off at the top (under the stomach and transverse colon).
    taper = np.where(u < 0.05, 0.78, 1.0) * np.where(u > 0.45, 1.0 - 1.6 * (u - 0.45), 1.0)
    (cx, cy), (ax, ay) = _SMALL_BOWEL_CENTER, _SMALL_BOWEL_AXES
    inside = ((x - cx) / (ax * taper)) ** 2 + ((y - cy) / (ay * taper)) ** 2 <= 1.0
    spine = (np.abs(x) < 50) & (y > -12)
    kidneys = (u > 0.3) & (y > 4)
    return inside & ~spine & ~kidneys


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


@dataclass(frozen=True)
class Anatomy:
    """One case-day's anatomy in mm, body-centred (image right = patient left, as radiologists)."""

    body_axes: tuple[float, float]
    body_center: tuple[float, float]
    fat: float
    muscle: float
    body_wobble: tuple[float, float]
    #: z (mm) of the top of the pelvis, where the hips widen the outline
    pelvis_z: float
    #: y (mm) of the back edge of the abdominal cavity; the spine is placed in front of it
    back_y: float
    #: the nominal-to-mm scale of the cavity in x and y (spine and other fixed-size parts use it)
    scale: tuple[float, float]
    tissue: dict[str, float]
    lungs: tuple[Ellipsoid, ...]
    heart: Ellipsoid
    liver: tuple[Ellipsoid, ...]
    gallbladder: Ellipsoid
    spleen: Ellipsoid
    kidneys: tuple[Ellipsoid, ...]
    bladder: Ellipsoid
    femoral_heads: tuple[Ellipsoid, ...]
    iliac_wings: tuple[Ellipsoid, ...]
    glutes: tuple[Ellipsoid, ...]
    #: solid tubes painted with their own ``content``: psoas, pancreas, great and pelvic vessels
    solids: Tube
    #: vessels inside the liver and the mesentery (bright or dark dots and streaks: distractors)
    vessels: Tube
    stomach: Tube
    #: y (mm) of the stomach's air-fluid level: gas above it (anterior, the patient lies supine)
    stomach_gas_y: float
    colon: Tube
    small_bowel: Tube


# ----------------------------------------------------------------------------------------------
# Shapes


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


def _lattice_walks(
    cells: np.ndarray, rng: np.random.Generator, vertical_bonus: float = 0.0
) -> list[list[int]]:
    """Cover the lattice ``cells`` (M, 3 ints) with self-avoiding walks between neighbours.

    Warnsdorff's rule (step to the free neighbour with the fewest free neighbours, randomized) fills
    the region with few, long walks that fold back and forth like bowel loops; a walk that gets
    stuck ends and the next starts at the most cornered free cell. Linear in the number of cells.
    ``vertical_bonus`` favours steps along z: an axial slice then cuts the walk into more, shorter
    pieces instead of a few long in-plane snakes.
    """
    index = {tuple(cell): i for i, cell in enumerate(cells.tolist())}
    units = ((1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1))
    neighbours = [
        [
            index[key]
            for du in units
            if (key := (cell[0] + du[0], cell[1] + du[1], cell[2] + du[2])) in index
        ]
        for cell in cells.tolist()
    ]
    free = np.ones(len(cells), dtype=bool)
    degree = np.array([len(n) for n in neighbours])

    def take(i: int) -> None:
        free[i] = False
        for n in neighbours[i]:
            degree[n] -= 1

    walks = []
    while free.any():
        candidates = np.flatnonzero(free)
        start = int(candidates[np.argmin(degree[candidates] + rng.random(len(candidates)))])
        walk = [start]
        take(start)
        while True:
            options = [n for n in neighbours[walk[-1]] if free[n]]
            if not options:
                break
            vertical = np.array([cells[n][2] != cells[walk[-1]][2] for n in options])
            scores = degree[options] + 1.6 * rng.random(len(options)) - vertical_bonus * vertical
            step = options[int(np.argmin(scores))]
            walk.append(step)
            take(step)
        walks.append(walk)
    return walks


def _smooth_warp(
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


# ----------------------------------------------------------------------------------------------
# One case


class _Frame:
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


def case_anatomy(seed: int, case: int, field_of_view: tuple[float, float]) -> Anatomy:
    """Draw the anatomy of one case (the same for all its days before :func:`deform`).

    Args:
        seed: the phantom's seed; the anatomy follows from ``(seed, case)`` alone.
        case: the case number.
        field_of_view: ``(width, height)`` of the scan in mm. The body is shrunk to fit a wide
            field; a field narrower than an abdomen (the 234 x 234 scans) is centred off the
            patient's midline instead, so one flank, and organs along it, run off the image.
    """
    rng = np.random.default_rng([seed, case, 0xA7])
    half_w, half_h = 0.5 * field_of_view[0], 0.5 * field_of_view[1]
    axis_x, axis_y = rng.uniform(150, 182), rng.uniform(106, 128)
    center_x, center_y = rng.normal(0.0, 5.0), rng.normal(0.0, 5.0)
    if half_w < 185.0:
        # A narrow field: keep the real body size and cut one flank off (border-touching organs).
        scale = 1.0
        center_x = float(rng.choice([-1.0, 1.0]) * rng.uniform(62.0, 80.0))
    else:
        # The widest outline (hips, wobble) must stay inside the image.
        scale = min(1.0, 0.97 * half_w / (axis_x * 1.12), 0.97 * half_h / (axis_y * 1.12))
    axis_x, axis_y = axis_x * scale, axis_y * scale
    fat = rng.uniform(9.0, 28.0) * scale
    muscle = rng.uniform(7.0, 11.0) * scale
    cavity_x = axis_x - fat - muscle
    cavity_y = (-(axis_y - fat - muscle), 0.88 * axis_y - fat - muscle)
    # The labelled organs live in a band of about 150 mm: about half of the 432 mm axis shows none.
    z0 = rng.uniform(0.27, 0.32) * Z_EXTENT_MM
    frame = _Frame(cavity_x, cavity_y, z0, rng.uniform(138.0, 162.0))
    tissue = {name: value * float(rng.uniform(0.88, 1.12)) for name, value in TISSUE.items()}
    # Vessels are bright (inflow) or dark (flow void), per case and vessel.
    arteries_bright = bool(rng.random() < 0.7)
    veins_bright = bool(rng.random() < 0.6)
    artery = tissue["blood"] if arteries_bright else tissue["flow_void"]
    vein = tissue["blood"] * 0.9 if veins_bright else tissue["flow_void"] * 1.5

    def e(x: float, y: float, u: float, r: tuple[float, float, float], a: float = 0.0) -> Ellipsoid:
        """An organ at its nominal place, jittered a little per case."""
        dx, dy, du, da = rng.normal(0.0, [4.0, 4.0, 0.02, 5.0])
        return frame.ellipsoid(x + dx, y + dy, u + du, r, a + da)

    size = frame.size
    solids = join_tubes(
        [
            *_psoas(frame, tissue["muscle"]),
            _pancreas(frame, rng, tissue["pancreas"]),
            *_great_vessels(frame, artery, vein),
        ]
    )
    vessels = join_tubes(
        [
            *_mesenteric_vessels(frame, rng, tissue, arteries_bright, veins_bright),
            *_liver_vessels(frame, rng, tissue["blood"] * 0.85),
        ]
    )
    stomach, gas_y = _stomach(frame, rng, tissue)
    return Anatomy(
        body_axes=(axis_x, axis_y),
        body_center=(center_x, center_y),
        fat=fat,
        muscle=muscle,
        body_wobble=(rng.uniform(0.02, 0.05), rng.uniform(0, 2 * math.pi)),
        pelvis_z=float(frame.z(-0.05)),
        back_y=cavity_y[1],
        scale=(frame.sx, frame.sy),
        tissue=tissue,
        lungs=(
            e(-78, 18, 1.78, (66, 74, 112)),
            e(78, 18, 1.78, (66, 74, 112)),
        ),
        heart=e(18, -38, 1.95, (66, 50, 72), 20),
        liver=(
            e(-58, -4, 1.2, (82, 84, 96), 8),
            e(-6, -52, 1.06, (56, 30, 46)),
        ),
        gallbladder=e(-46, -50, 0.8, (13, 17, 30), 30),
        spleen=e(92, 34, 1.02, (30, 42, 50), -30),
        kidneys=(
            e(-72, 34, 0.66, (23, 31, 50), 22),
            e(72, 34, 0.72, (23, 31, 50), -22),
        ),
        bladder=e(0, -28, -0.5, (44 * rng.uniform(0.8, 1.1), 34, 40)),
        femoral_heads=(
            e(-90, 10, -0.78, (24 * size / frame.sx, 24 * size / frame.sy, 24 * size)),
            e(90, 10, -0.78, (24 * size / frame.sx, 24 * size / frame.sy, 24 * size)),
        ),
        iliac_wings=(
            e(-100, 40, -0.3, (18, 52, 50), 35),
            e(100, 40, -0.3, (18, 52, 50), -35),
        ),
        glutes=(
            e(-88, 80, -0.5, (62, 46, 95)),
            e(88, 80, -0.5, (62, 46, 95)),
        ),
        solids=solids,
        vessels=vessels,
        stomach=stomach,
        stomach_gas_y=gas_y,
        colon=_colon(frame, rng, tissue, size),
        small_bowel=_small_bowel(frame, rng, tissue),
    )


def _psoas(frame: _Frame, value: float) -> list[Tube]:
    """The psoas muscles: thin beside the upper lumbar spine, thick low, then into the pelvis."""
    tubes = []
    for side in (-1, 1):
        control = np.array(
            [
                frame.point(side * 32, 30, 0.85),
                frame.point(side * 40, 26, 0.4),
                frame.point(side * 54, 12, 0.0),
                frame.point(side * 70, -6, -0.35),
            ]
        )
        radii = np.array([5.0, 16.0, 21.0, 19.0]) * frame.size
        tubes.append(make_tube(control, radii, content=value))
    return tubes


def _pancreas(frame: _Frame, rng: np.random.Generator, value: float) -> Tube:
    """A lobulated solid tube from the head (by the duodenum) to the tail (by the spleen)."""
    nominal = [(-32, -30, 0.6, 15), (0, -40, 0.7, 11), (40, -26, 0.76, 10), (76, 6, 0.82, 9)]
    control = np.array([frame.point(x, y + rng.normal(0, 3), u) for x, y, u, _ in nominal])
    radii = np.array([r for *_, r in nominal]) * frame.size
    return make_tube(control, radii, content=value * rng.uniform(0.9, 1.1, size=len(nominal)))


def _great_vessels(frame: _Frame, artery: float, vein: float) -> list[Tube]:
    """Aorta and inferior vena cava in front of the spine, splitting into the iliac vessels."""
    tubes = []
    top = Z_EXTENT_MM + 20.0
    for x, y, radius, value, split in ((12, 4, 10.0, artery, 0.3), (-22, 6, 11.0, vein, 0.27)):
        trunk = np.array(
            [frame.point(x, y, split), frame.point(x, y + 2, 1.0), [frame.x(x), frame.y(y), top]]
        )
        tubes.append(make_tube(trunk, radius * frame.size, content=value))
        for side in (-1, 1):
            branch = np.array(
                [
                    frame.point(x, y, split + 0.02),
                    frame.point(side * 36 + x * 0.3, y + 6, split - 0.2),
                    frame.point(side * 62, -14, -0.4),
                    frame.point(side * 70, -20, -0.9),
                ]
            )
            tubes.append(make_tube(branch, 0.62 * radius * frame.size, content=value))
    return tubes


def _mesenteric_vessels(
    frame: _Frame,
    rng: np.random.Generator,
    tissue: dict[str, float],
    arteries_bright: bool,
    veins_bright: bool,
) -> list[Tube]:
    """Vessels fanning from the mesenteric root through the small-bowel region.

    Their cross-sections are small bright or dark dots and streaks between the loops: exactly the
    size and brightness of a small-bowel piece, which is what makes the loops hard to pick out.
    """
    root = frame.point(4, -34, 0.62)
    tubes = []
    for _ in range(int(rng.integers(34, 48))):
        angle = rng.uniform(0, 2 * math.pi)
        reach = rng.uniform(0.35, 1.0)
        end = frame.point(
            _SMALL_BOWEL_CENTER[0] + _SMALL_BOWEL_AXES[0] * reach * math.cos(angle),
            _SMALL_BOWEL_CENTER[1] + _SMALL_BOWEL_AXES[1] * reach * math.sin(angle),
            rng.uniform(*_SMALL_BOWEL_U),
        )
        bend = (root + end) / 2 + rng.normal(0.0, 12.0, size=3)
        radius = rng.uniform(1.4, 2.8) * frame.size
        bright = (arteries_bright if rng.random() < 0.5 else veins_bright) or rng.random() < 0.2
        value = tissue["blood"] * rng.uniform(0.85, 1.05) if bright else tissue["flow_void"]
        control = np.array([root, bend, end])
        radii = radius * np.array([1.5, 1.0, 0.7])
        # Beads of a thin vessel merge at this pixel size anyway: few spheres suffice.
        tubes.append(make_tube(control, radii, content=value, step=0.9 * radius))
    # Lymph nodes: intermediate ovals of a loop's size, like chyme-filled loops without a wall.
    count = int(rng.integers(12, 24))
    nodes = np.column_stack(
        [
            rng.uniform(-1, 1, count) * _SMALL_BOWEL_AXES[0] * 0.8,
            _SMALL_BOWEL_CENTER[1] + rng.uniform(-1, 1, count) * _SMALL_BOWEL_AXES[1] * 0.8,
            rng.uniform(*_SMALL_BOWEL_U, size=count),
        ]
    )
    offset = np.array([0.0, 0.0, 2.0])  # a short vertical piece: an ellipsoidal node
    for x, y, u in nodes:
        center = frame.point(x, y, u)
        control = np.array([center - offset, center + offset])
        value = tissue["pancreas"] * rng.uniform(0.9, 1.4)
        tubes.append(make_tube(control, rng.uniform(3.0, 5.5) * frame.size, content=value))
    # The superior mesenteric artery and vein: the trunks the fan hangs from.
    for x, value in ((6, tissue["blood"]), (-12, tissue["blood"] * 0.9)):
        control = np.array([frame.point(x, -28, 0.78), root, frame.point(x, -46, 0.2)])
        tubes.append(make_tube(control, 4.0 * frame.size, content=value))
    return tubes


def _liver_vessels(frame: _Frame, rng: np.random.Generator, value: float) -> list[Tube]:
    """Portal and hepatic veins: bright branches inside the liver."""
    hilum = frame.point(-34, -8, 0.95)
    tubes = []
    for _ in range(int(rng.integers(7, 12))):
        end = frame.point(rng.uniform(-120, -20), rng.uniform(-70, 50), rng.uniform(0.85, 1.6))
        bend = (hilum + end) / 2 + rng.normal(0.0, 8.0, size=3)
        radius = rng.uniform(2.5, 4.5) * frame.size
        control = np.array([hilum, bend, end])
        tubes.append(make_tube(control, radius * np.array([1.0, 0.8, 0.5]), step=0.9 * radius))
    tube = join_tubes(tubes)
    return [replace(tube, content=np.full(len(tube), value))]


def _stomach(
    frame: _Frame, rng: np.random.Generator, tissue: dict[str, float]
) -> tuple[Tube, float]:
    """The stomach (a wide J-shaped tube) and the y of its air-fluid level.

    Contents: fluid (bright), food (mottled, intermediate) or nearly empty (collapsed folds, dark);
    gas floats anterior of the level (the patient lies supine).
    """
    kind = rng.choice(["fluid", "food", "empty"], p=[0.4, 0.4, 0.2])
    filling = rng.uniform(0.85, 1.15) * (0.6 if kind == "empty" else 1.0)
    control = np.array(
        [frame.point(x + rng.normal(0, 4), y + rng.normal(0, 4), u) for x, y, u, _ in _STOMACH_AXIS]
    )
    outer = np.array([r for *_, r in _STOMACH_AXIS]) * frame.size * filling
    wall = rng.uniform(3.0, 5.0) * frame.size * (1.6 if kind == "empty" else 1.0)
    content, mottle = {
        "fluid": (tissue["fluid"] * rng.uniform(0.82, 0.95), 0.04),
        "food": (rng.uniform(0.45, 0.6), rng.uniform(0.22, 0.32)),
        "empty": (tissue["gut_wall"] * 1.2, 0.12),
    }[str(kind)]
    tube = make_tube(control, outer, outer - wall, content, mottle)
    gas_y = float(frame.y(rng.uniform(-80, -40 if kind != "empty" else -70)))
    return tube, gas_y


def _colon(frame: _Frame, rng: np.random.Generator, tissue: dict[str, float], size: float) -> Tube:
    """The colon along its frame, with contents chosen per segment.

    Most segments are filled (stool, fluid, collapsed) and labelled with their lumen; one of the
    long vertical segments (and sometimes the transverse colon) is gas-distended and labelled as
    its wall only, so ring-shaped masks with holes always occur.
    """
    kinds = {
        "rectum": rng.choice(["collapsed", "stool"], p=[0.6, 0.4]),
        "sigmoid": rng.choice(["collapsed", "stool"], p=[0.4, 0.6]),
        "descending": rng.choice(["stool", "collapsed"], p=[0.8, 0.2]),
        "transverse": rng.choice(["stool", "fluid", "gas"], p=[0.6, 0.15, 0.25]),
        "ascending": rng.choice(["stool", "fluid"], p=[0.6, 0.4]),
        "caecum": rng.choice(["fluid", "stool"], p=[0.6, 0.4]),
    }
    kinds[str(rng.choice(["ascending", "descending"]))] = "gas"
    control, outer, lumen, content, mottle, hollow = [], [], [], [], [], []
    wall = rng.uniform(1.8, 2.8) * size
    for x, y, u, radius, name in _COLON_FRAME:
        kind = str(kinds[name])
        signal, grain, factor = _COLON_KINDS[kind]
        r = radius * size * factor * rng.uniform(0.9, 1.1)
        control.append(frame.point(x + rng.normal(0, 5), y + rng.normal(0, 5), u))
        outer.append(r)
        lumen.append(r - (0.7 if kind == "gas" else 1.0) * wall)
        content.append(rng.uniform(*signal) * (tissue["fluid"] if kind == "fluid" else 1.0))
        mottle.append(rng.uniform(*grain))
        hollow.append(1.0 if kind == "gas" else 0.0)
    tube = make_tube(
        np.array(control),
        outer,
        lumen,
        content,
        mottle,
        hollow,
        step=2.2 * size,
        haustra=(rng.uniform(26, 40) * size, 0.1),
    )
    # Contents are interpolated between segments; an unlabelled lumen must show gas, though.
    gas = _COLON_KINDS["gas"][0][0]
    return replace(
        tube,
        content=np.where(tube.hollow, gas, tube.content),
        mottle=np.where(tube.hollow, 0.0, tube.mottle),
    )


def _small_bowel(frame: _Frame, rng: np.random.Generator, tissue: dict[str, float]) -> Tube:
    """Dozens of loops: self-avoiding walks through a jittered lattice in the mid-abdomen.

    Contents change every few lattice cells (fluid-bright, intermediate chyme, collapsed-dark);
    the duodenum's C-loop joins them.
    """
    spacing = _LATTICE_MM * rng.uniform(0.95, 1.05)
    u_low, u_high = _SMALL_BOWEL_U
    z_step = spacing / frame.length  # the lattice is cubic in nominal mm
    reach = np.array(_SMALL_BOWEL_AXES) / spacing
    nx, ny, nz = int(reach[0]) + 1, int(reach[1]) + 1, int((u_high - u_low) / z_step)
    grid = np.stack(
        np.meshgrid(
            np.arange(-nx, nx + 1), np.arange(-ny, ny + 1), np.arange(nz + 1), indexing="ij"
        ),
        axis=-1,
    ).reshape(-1, 3)
    cx, cy = _SMALL_BOWEL_CENTER
    inside = _small_bowel_region(
        cx + grid[:, 0] * spacing, cy + grid[:, 1] * spacing, u_low + grid[:, 2] * z_step
    )
    cells = grid[inside]
    walks = _lattice_walks(cells, rng, vertical_bonus=0.9)
    # A smooth random warp hides the lattice (no rows of equal discs) and tilts its columns, so
    # slices cut loops obliquely; being smooth, it keeps neighbours apart.
    warp = _smooth_warp(rng, amplitude=0.3 * spacing, wavelength=(3.0 * spacing, 6.0 * spacing))

    kinds = list(_SMALL_BOWEL_KINDS)
    weights = np.array([_SMALL_BOWEL_KINDS[k][3] for k in kinds])
    wall = rng.uniform(1.2, 1.8)
    tubes = []
    for walk in walks:
        lattice = cells[walk].astype(float)
        if len(walk) == 1:  # a lone cell: a short blind piece along a random axis
            axis = np.zeros(3)
            axis[int(rng.integers(0, 3))] = 0.35
            lattice = np.stack([lattice[0] - axis, lattice[0] + axis])
        nominal = warp(lattice * spacing) + rng.normal(0.0, 0.06 * spacing, size=lattice.shape)
        # A kink between neighbouring cells: the tube meanders instead of running straight,
        # so oblique cuts give curved sausages and commas rather than only round discs.
        kink = rng.normal(0.0, _KINK * spacing, (len(nominal) - 1, 3))
        middle = (nominal[1:] + nominal[:-1]) / 2 + kink
        nominal = np.insert(nominal, np.arange(1, len(nominal)), middle, axis=0)
        control = np.column_stack(
            [
                frame.x(cx + nominal[:, 0]),
                frame.y(cy + nominal[:, 1]),
                frame.z(u_low + nominal[:, 2] / frame.length),
            ]
        )
        outer, content, mottle = (
            np.zeros(len(control)),
            np.zeros(len(control)),
            np.zeros(len(control)),
        )
        start = 0
        while start < len(control):
            length = int(rng.integers(2, 7))
            kind = kinds[int(rng.choice(len(kinds), p=weights / weights.sum()))]
            signal, grain, radius, _ = _SMALL_BOWEL_KINDS[kind]
            part = slice(start, start + length)
            outer[part] = rng.uniform(*radius)
            content[part] = rng.uniform(*signal) * (tissue["fluid"] if kind == "fluid" else 1.0)
            mottle[part] = grain
            start += length
        outer = outer * frame.size
        lumen = np.maximum(outer - wall * frame.size, 0.0)
        tubes.append(make_tube(control, outer, lumen, content, mottle))
    duodenum = np.array([frame.point(x, y, u) for x, y, u in _DUODENUM])
    radius = rng.uniform(7.0, 9.0) * frame.size
    tubes.append(
        make_tube(duodenum, radius, radius - wall * frame.size, rng.uniform(0.4, 0.9), 0.1)
    )
    return join_tubes(tubes)


# ----------------------------------------------------------------------------------------------
# Later days


def deform(anatomy: Anatomy, rng: np.random.Generator) -> Anatomy:
    """The same anatomy on a later day: shifted, smoothly displaced, bowel contents moved on.

    One smooth displacement field moves every shape, so neighbouring parts move together; the
    stomach fills anew, and peristalsis reshuffles part of the small bowel's contents.
    """
    shift = np.array([rng.normal(0, 4), rng.normal(0, 4), rng.normal(0, 6)])
    amplitude = rng.uniform(2.0, 4.0)
    wave = rng.uniform(1 / 90, 1 / 50, size=(3, 3)) * rng.choice([-1, 1], size=(3, 3))
    phase = rng.uniform(0, 2 * math.pi, size=3)

    def move(points: np.ndarray) -> np.ndarray:
        # Shapes are body-centred: the in-plane shift moves the body (and all of them) through
        # ``body_center``; here only the height shift and the smooth displacement apply.
        return points + (0.0, 0.0, shift[2]) + amplitude * np.sin(points @ wave.T + phase)

    def move_tube(tube: Tube) -> Tube:
        return replace(tube, points=move(tube.points))

    def move_ellipsoid(item: Ellipsoid, factor: float = 1.0) -> Ellipsoid:
        center = tuple(float(v) for v in move(np.array([item.center]))[0])
        radii = (item.radii[0] * factor, item.radii[1] * factor, item.radii[2] * factor)
        return replace(item, center=center, radii=radii)

    def move_all(items: tuple[Ellipsoid, ...]) -> tuple[Ellipsoid, ...]:
        return tuple(move_ellipsoid(item) for item in items)

    small = anatomy.small_bowel
    # Peristalsis: about a third of the bowel (in runs of 40 spheres, some 10 cm) holds new
    # contents of a random kind today.
    content, mottle = small.content.copy(), small.mottle.copy()
    kinds = list(_SMALL_BOWEL_KINDS)
    for start in range(0, len(small), 40):
        if rng.random() < 0.3:
            kind = kinds[int(rng.integers(len(kinds)))]
            signal, grain, _, _ = _SMALL_BOWEL_KINDS[kind]
            fluid = anatomy.tissue["fluid"] if kind == "fluid" else 1.0
            content[start : start + 40] = rng.uniform(*signal) * fluid
            mottle[start : start + 40] = grain
    small = replace(move_tube(small), content=content, mottle=mottle)

    filling = rng.uniform(0.9, 1.1)
    stomach = move_tube(anatomy.stomach)
    stomach = replace(
        stomach,
        outer=stomach.outer * filling,
        lumen=np.maximum(stomach.lumen * filling, 0.0),
        content=stomach.content * rng.uniform(0.9, 1.1),
    )
    return replace(
        anatomy,
        body_center=(anatomy.body_center[0] + shift[0], anatomy.body_center[1] + shift[1]),
        lungs=move_all(anatomy.lungs),
        heart=move_ellipsoid(anatomy.heart),
        liver=move_all(anatomy.liver),
        gallbladder=move_ellipsoid(anatomy.gallbladder, rng.uniform(0.8, 1.2)),
        spleen=move_ellipsoid(anatomy.spleen),
        kidneys=move_all(anatomy.kidneys),
        bladder=move_ellipsoid(anatomy.bladder, rng.uniform(0.8, 1.2)),
        femoral_heads=move_all(anatomy.femoral_heads),
        iliac_wings=move_all(anatomy.iliac_wings),
        glutes=move_all(anatomy.glutes),
        solids=move_tube(anatomy.solids),
        vessels=move_tube(anatomy.vessels),
        stomach=stomach,
        stomach_gas_y=anatomy.stomach_gas_y + rng.normal(0, 6),
        colon=move_tube(anatomy.colon),
        small_bowel=small,
    )
