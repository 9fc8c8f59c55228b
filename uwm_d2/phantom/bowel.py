"""The labelled organs of the phantom: stomach, colon and small bowel, and the small bowel's moves.

Each organ is one :class:`~uwm_d2.phantom.shapes.Tube` placed in the nominal cavity frame
(:class:`~uwm_d2.phantom.shapes.Frame`). The small bowel is the hard part: a self-avoiding walk
through a jittered 3D lattice packed into the mid-abdomen, so that an axial slice cuts it into
dozens of separate pieces, as a real one does.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from uwm_d2.phantom.shapes import Frame, Tube, join_tubes, make_tube, smooth_warp

#: Small-bowel contents: signal range, grain amplitude, nominal outer radius range (mm), weight.
#: Fluid-filled loops are as bright as fat and vessels, collapsed ones as dark as muscle.
SMALL_BOWEL_KINDS: dict[str, tuple[tuple[float, float], float, tuple[float, float], float]] = {
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
SMALL_BOWEL_U = (-0.12, 0.62)
SMALL_BOWEL_CENTER = (0.0, -22.0)
SMALL_BOWEL_AXES = (96.0, 70.0)
#: Lattice spacing (nominal mm): neighbouring loops sit this far apart, centre to centre, so
#: a few millimetres of mesenteric fat separate most of them.
_LATTICE_MM = 17.0
#: How far (in lattice spacings) a loop meanders off the straight line between two cells.
_KINK = 0.12


def _small_bowel_region(x: np.ndarray, y: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Whether nominal points ``(x, y)`` at heights ``u`` lie in the small bowel's space."""
    # Narrower in the pelvis, tapering off at the top (under the stomach and transverse colon).
    taper = np.where(u < 0.05, 0.78, 1.0) * np.where(u > 0.45, 1.0 - 1.6 * (u - 0.45), 1.0)
    (cx, cy), (ax, ay) = SMALL_BOWEL_CENTER, SMALL_BOWEL_AXES
    inside = ((x - cx) / (ax * taper)) ** 2 + ((y - cy) / (ay * taper)) ** 2 <= 1.0
    spine = (np.abs(x) < 50) & (y > -12)
    kidneys = (u > 0.3) & (y > 4)
    return inside & ~spine & ~kidneys


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


def stomach(frame: Frame, rng: np.random.Generator, tissue: dict[str, float]) -> tuple[Tube, float]:
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


def colon(frame: Frame, rng: np.random.Generator, tissue: dict[str, float], size: float) -> Tube:
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


def small_bowel(frame: Frame, rng: np.random.Generator, tissue: dict[str, float]) -> Tube:
    """Dozens of loops: self-avoiding walks through a jittered lattice in the mid-abdomen.

    Contents change every few lattice cells (fluid-bright, intermediate chyme, collapsed-dark);
    the duodenum's C-loop joins them.
    """
    spacing = _LATTICE_MM * rng.uniform(0.95, 1.05)
    u_low, u_high = SMALL_BOWEL_U
    z_step = spacing / frame.length  # the lattice is cubic in nominal mm
    reach = np.array(SMALL_BOWEL_AXES) / spacing
    nx, ny, nz = int(reach[0]) + 1, int(reach[1]) + 1, int((u_high - u_low) / z_step)
    grid = np.stack(
        np.meshgrid(
            np.arange(-nx, nx + 1), np.arange(-ny, ny + 1), np.arange(nz + 1), indexing="ij"
        ),
        axis=-1,
    ).reshape(-1, 3)
    cx, cy = SMALL_BOWEL_CENTER
    inside = _small_bowel_region(
        cx + grid[:, 0] * spacing, cy + grid[:, 1] * spacing, u_low + grid[:, 2] * z_step
    )
    cells = grid[inside]
    walks = _lattice_walks(cells, rng, vertical_bonus=0.9)
    # A smooth random warp hides the lattice (no rows of equal discs) and tilts its columns, so
    # slices cut loops obliquely; being smooth, it keeps neighbours apart.
    warp = smooth_warp(rng, amplitude=0.3 * spacing, wavelength=(3.0 * spacing, 6.0 * spacing))

    kinds = list(SMALL_BOWEL_KINDS)
    weights = np.array([SMALL_BOWEL_KINDS[k][3] for k in kinds])
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
            signal, grain, radius, _ = SMALL_BOWEL_KINDS[kind]
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


def peristalsis(
    small_bowel: Tube, fluid: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """A later day's small-bowel contents: ``(content, mottle)`` per sphere.

    About a third of the bowel (in runs of 40 spheres, some 10 cm) holds new contents of a random
    kind; ``fluid`` is the case's fluid signal.
    """
    content, mottle = small_bowel.content.copy(), small_bowel.mottle.copy()
    kinds = list(SMALL_BOWEL_KINDS)
    for start in range(0, len(small_bowel), 40):
        if rng.random() < 0.3:
            kind = kinds[int(rng.integers(len(kinds)))]
            signal, grain, _, _ = SMALL_BOWEL_KINDS[kind]
            scale = fluid if kind == "fluid" else 1.0
            content[start : start + 40] = rng.uniform(*signal) * scale
            mottle[start : start + 40] = grain
    return content, mottle
