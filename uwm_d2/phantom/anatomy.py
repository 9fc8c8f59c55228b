"""The phantom's anatomy in millimetres: one case's body and organs, and a later day's deformation.

The shapes and the nominal cavity frame they are placed in are :mod:`uwm_d2.phantom.shapes`; the
labelled organs (stomach, colon, small bowel) are :mod:`uwm_d2.phantom.bowel`. Here is the rest of
the abdomen around them (solid organs, muscles, bones, vessels), built into one :class:`Anatomy`
along a canonical :data:`Z_EXTENT_MM` axis, and the smooth deformation of a later scan day.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from uwm_d2.phantom import bowel
from uwm_d2.phantom.bowel import SMALL_BOWEL_AXES, SMALL_BOWEL_CENTER, SMALL_BOWEL_U
from uwm_d2.phantom.shapes import Ellipsoid, Frame, Tube, join_tubes, make_tube

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
    frame = Frame(cavity_x, cavity_y, z0, rng.uniform(138.0, 162.0))
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
    stomach, gas_y = bowel.stomach(frame, rng, tissue)
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
        colon=bowel.colon(frame, rng, tissue, size),
        small_bowel=bowel.small_bowel(frame, rng, tissue),
    )


def _psoas(frame: Frame, value: float) -> list[Tube]:
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


def _pancreas(frame: Frame, rng: np.random.Generator, value: float) -> Tube:
    """A lobulated solid tube from the head (by the duodenum) to the tail (by the spleen)."""
    nominal = [(-32, -30, 0.6, 15), (0, -40, 0.7, 11), (40, -26, 0.76, 10), (76, 6, 0.82, 9)]
    control = np.array([frame.point(x, y + rng.normal(0, 3), u) for x, y, u, _ in nominal])
    radii = np.array([r for *_, r in nominal]) * frame.size
    return make_tube(control, radii, content=value * rng.uniform(0.9, 1.1, size=len(nominal)))


def _great_vessels(frame: Frame, artery: float, vein: float) -> list[Tube]:
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
    frame: Frame,
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
            SMALL_BOWEL_CENTER[0] + SMALL_BOWEL_AXES[0] * reach * math.cos(angle),
            SMALL_BOWEL_CENTER[1] + SMALL_BOWEL_AXES[1] * reach * math.sin(angle),
            rng.uniform(*SMALL_BOWEL_U),
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
            rng.uniform(-1, 1, count) * SMALL_BOWEL_AXES[0] * 0.8,
            SMALL_BOWEL_CENTER[1] + rng.uniform(-1, 1, count) * SMALL_BOWEL_AXES[1] * 0.8,
            rng.uniform(*SMALL_BOWEL_U, size=count),
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


def _liver_vessels(frame: Frame, rng: np.random.Generator, value: float) -> list[Tube]:
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

    # Peristalsis: part of the small bowel holds new contents today.
    content, mottle = bowel.peristalsis(anatomy.small_bowel, anatomy.tissue["fluid"], rng)
    small = replace(move_tube(anatomy.small_bowel), content=content, mottle=mottle)

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
