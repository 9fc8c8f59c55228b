"""One phantom slice: its intensities and its three label masks; then bias field, noise and gain.

:func:`render_slice` paints an :class:`~uwm_d2.phantom.anatomy.Anatomy` cut at one height into
three float canvases with OpenCV's drawing functions (sub-pixel precise, a few microseconds per
shape): the tissue signal, the amplitude of a fine texture (fat lobules, parenchyma) and the
amplitude of a grainy texture (stool, food). Painting goes back to front, and every label mask is
drawn from the same shapes as the pixels, so a label always covers exactly what its organ shows:

1. body: subcutaneous fat, the muscle wall, the visceral fat of the cavity;
2. unlabelled organs, bones and vessels (the distractors);
3. small bowel, then large bowel, then stomach, each over the previous (and taken out of its
   label), the colon's gas-distended segments leaving their lumen out of the label;
4. the body wall again (nothing sticks out of the cavity), then the spine, which nothing crosses.

:class:`ScanRenderer` adds what a scanner adds: a partial-volume blur, a smooth multiplicative
bias field (coil sensitivity) drifting along z, a per-scan gain (16-bit maxima from about a
thousand to about twenty thousand) and Rician noise (the magnitude of complex Gaussian noise).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from uwm_d2.phantom.anatomy import Z_EXTENT_MM, Anatomy
from uwm_d2.phantom.shapes import Ellipsoid, Tube

#: Fixed-point bits for OpenCV drawing (coordinates in 1/16 pixel).
_SHIFT = 4
_ONE = 1 << _SHIFT

# Fine-texture amplitudes: how much each tissue varies (fat lobules, mesenteric strands).
_TEXTURE = {"fat": 0.05, "muscle": 0.06, "visceral_fat": 0.14, "organ": 0.05, "lung": 0.6}


@dataclass(frozen=True)
class TubeSection:
    """The discs one tube leaves in a slice: centres and radii in fixed-point pixels."""

    centers: list[tuple[int, int]]
    outer: list[int]
    lumen: list[int]
    index: np.ndarray


class Canvas:
    """Maps body-centred mm to pixels of one scan and draws shapes into any 2D array."""

    def __init__(self, width: int, height: int, spacing: float, center_mm: tuple[float, float]):
        self.shape = (height, width)
        self.spacing = spacing
        self.origin = (
            (width - 1) / 2 + center_mm[0] / spacing,
            (height - 1) / 2 + center_mm[1] / spacing,
        )

    def mask(self) -> np.ndarray:
        return np.zeros(self.shape, dtype=np.uint8)

    def image(self) -> np.ndarray:
        return np.zeros(self.shape, dtype=np.float32)

    def fixed(self, x: float, y: float) -> tuple[int, int]:
        """Pixel position of ``(x, y)`` mm, in 1/16 pixel."""
        return (
            round((self.origin[0] + x / self.spacing) * _ONE),
            round((self.origin[1] + y / self.spacing) * _ONE),
        )

    def ellipse(
        self,
        target: np.ndarray,
        x: float,
        y: float,
        ax: float,
        ay: float,
        value: float,
        angle: float = 0.0,
    ) -> None:
        """Fill an ellipse with semi-axes ``ax``, ``ay`` mm centred at ``(x, y)`` mm."""
        axes = (round(ax / self.spacing * _ONE), round(ay / self.spacing * _ONE))
        cv2.ellipse(
            target, self.fixed(x, y), axes, angle, 0, 360, float(value), -1, cv2.LINE_8, _SHIFT
        )

    def ellipsoid(
        self, targets: list[tuple[np.ndarray, float]], item: Ellipsoid, z: float, shrink: float = 1
    ) -> bool:
        """Fill ``item``'s cross-section at ``z`` (radii times ``shrink``) into each target.

        ``targets`` pairs an array with the value to draw into it; returns ``False`` (and draws
        nothing) if the plane misses the ellipsoid.
        """
        (cx, cy, cz), (rx, ry, rz) = item.center, item.radii
        fraction = 1.0 - ((z - cz) / (rz * shrink)) ** 2
        if fraction <= 0.0:
            return False
        root = math.sqrt(fraction) * shrink
        for target, value in targets:
            self.ellipse(target, cx, cy, rx * root, ry * root, value, item.angle)
        return True

    def polygon(self, target: np.ndarray, xy: np.ndarray, value: float) -> None:
        pixels = xy / self.spacing + np.array(self.origin)
        points = [np.round(pixels * _ONE).astype(np.int32)]
        cv2.fillPoly(target, points, float(value), cv2.LINE_8, _SHIFT)

    def section(self, tube: Tube, z: float) -> TubeSection | None:
        """The discs where the plane at ``z`` cuts the tube's spheres (and their lumens)."""
        dz = tube.points[:, 2] - z
        index = np.flatnonzero(np.abs(dz) < tube.outer)
        if index.size == 0:
            return None
        dz2 = dz[index] ** 2
        # A sphere of radius r at height offset dz cuts the plane in a disc of sqrt(r² - dz²).
        scale = _ONE / self.spacing
        outer = np.sqrt(tube.outer[index] ** 2 - dz2) * scale
        lumen = np.sqrt(np.maximum(tube.lumen[index] ** 2 - dz2, 0.0)) * scale
        centers = tube.points[index, :2] * scale + np.array(self.origin) * _ONE
        return TubeSection(
            centers=[tuple(c) for c in np.round(centers).astype(np.int64).tolist()],
            outer=np.round(outer).astype(np.int64).tolist(),
            lumen=np.round(lumen).astype(np.int64).tolist(),
            index=index,
        )


def _discs(target: np.ndarray, centers: list, radii: list, values: list | float) -> None:
    """Fill discs (fixed-point centres and radii) with one value or one value each."""
    if isinstance(values, float):
        values = [values] * len(radii)
    for center, radius, value in zip(centers, radii, values, strict=True):
        if radius > 0:
            cv2.circle(target, center, radius, value, -1, cv2.LINE_8, _SHIFT)


def body_outline(ax: float, ay: float, inset: float) -> np.ndarray:
    """A superellipse (boxier than an ellipse, flatter at the back), shrunk by ``inset`` mm."""
    theta = np.linspace(0.0, 2 * math.pi, 120, endpoint=False)
    cos, sin = np.cos(theta), np.sin(theta)
    exponent = 2.0 / 2.5
    x = (ax - inset) * np.sign(cos) * np.abs(cos) ** exponent
    y = (ay - inset) * np.sign(sin) * np.abs(sin) ** exponent
    y = np.where(y > 0, y * 0.88, y)  # the back lies flat on the table
    return np.column_stack([x, y])


def body_axes(anatomy: Anatomy, z: float) -> tuple[float, float]:
    """The body's half-axes at height ``z``: a slow wobble along z, wider at the hips."""
    amplitude, phase = anatomy.body_wobble
    wobble = 1.0 + amplitude * math.sin(2 * math.pi * 1.3 * z / Z_EXTENT_MM + phase)
    below = np.clip((anatomy.pelvis_z - z) / 60.0, 0.0, 1.0)
    hips = 1.0 + 0.1 * float(below * below * (3 - 2 * below))  # smoothstep into the pelvis
    return anatomy.body_axes[0] * wobble * hips, anatomy.body_axes[1] * wobble


@dataclass(frozen=True)
class SliceTextures:
    """Unit-variance texture fields of one slice: ``fine`` (lobules), ``grain`` (stool, food)."""

    fine: np.ndarray
    grain: np.ndarray


def render_slice(
    anatomy: Anatomy, canvas: Canvas, z: float, textures: SliceTextures, rows: np.ndarray
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """One slice's noiseless relative signal (float32) and its label masks (uint8, by class).

    ``rows`` is the ``(H, W)`` grid of row numbers (for the stomach's air-fluid level).
    """
    tissue = anatomy.tissue
    base, fine_amp, grain_amp = canvas.image(), canvas.image(), canvas.image()

    def paint(value: float, texture: float) -> list[tuple[np.ndarray, float]]:
        return [(base, value), (fine_amp, texture)]

    # 1. The body: subcutaneous fat, the muscle wall, the cavity's visceral fat.
    ax, ay = body_axes(anatomy, z)
    body, wall, cavity = canvas.mask(), canvas.mask(), canvas.mask()
    for mask, inset, name, texture in (
        (body, 0.0, "fat", "fat"),
        (wall, anatomy.fat, "muscle", "muscle"),
        (cavity, anatomy.fat + anatomy.muscle, "visceral_fat", "visceral_fat"),
    ):
        outline = body_outline(ax, ay, inset)
        canvas.polygon(mask, outline, 1)
        canvas.polygon(base, outline, tissue[name])
        canvas.polygon(fine_amp, outline, _TEXTURE[texture])

    # 2. Unlabelled organs, bones and vessels.
    organ = _TEXTURE["organ"]
    for item in anatomy.glutes:
        canvas.ellipsoid(paint(tissue["muscle"], _TEXTURE["muscle"]), item, z)
    for item in anatomy.lungs:
        canvas.ellipsoid(paint(tissue["lung"], _TEXTURE["lung"]), item, z)
    if canvas.ellipsoid(paint(tissue["heart"], organ), anatomy.heart, z):
        canvas.ellipsoid(paint(tissue["blood"], organ), anatomy.heart, z, shrink=0.72)
    for item in anatomy.liver:
        canvas.ellipsoid(paint(tissue["liver"], organ), item, z)
    canvas.ellipsoid(paint(tissue["fluid"], 0.02), anatomy.gallbladder, z)
    canvas.ellipsoid(paint(tissue["spleen"], organ), anatomy.spleen, z)
    for item in anatomy.kidneys:
        if canvas.ellipsoid(paint(tissue["kidney"], organ), item, z):
            canvas.ellipsoid(paint(tissue["medulla"], organ), item, z, shrink=0.66)
            canvas.ellipsoid(paint(tissue["fat"], _TEXTURE["fat"]), item, z, shrink=0.3)
    canvas.ellipsoid(paint(tissue["fluid"], 0.02), anatomy.bladder, z)
    for item in (*anatomy.iliac_wings, *anatomy.femoral_heads):
        if canvas.ellipsoid(paint(tissue["bone"], 0.0), item, z):
            canvas.ellipsoid(paint(tissue["marrow"], organ), item, z, shrink=0.8)
    cut = canvas.section(anatomy.solids, z)
    if cut is not None:
        _discs(base, cut.centers, cut.outer, anatomy.solids.content[cut.index].tolist())
        _discs(fine_amp, cut.centers, cut.outer, organ)
    # Vessels are a few pixels across: they keep the texture of the fat they run through.
    cut = canvas.section(anatomy.vessels, z)
    if cut is not None:
        _discs(base, cut.centers, cut.outer, anatomy.vessels.content[cut.index].tolist())

    # 3. The labelled organs, back to front: small bowel, large bowel, stomach.
    small = _paint_bowel(anatomy.small_bowel, canvas, z, base, fine_amp, grain_amp, tissue)
    large = _paint_bowel(anatomy.colon, canvas, z, base, fine_amp, grain_amp, tissue)
    stomach = _paint_stomach(anatomy, canvas, z, base, fine_amp, grain_amp, rows)

    # 4. Nothing sticks out of the cavity (or the body): repaint the wall, fat and air over it.
    ring = (wall & ~cavity).view(bool)
    np.copyto(base, np.float32(tissue["muscle"]), where=ring)
    np.copyto(fine_amp, np.float32(_TEXTURE["muscle"]), where=ring)
    fat_ring = (body & ~wall).view(bool)
    np.copyto(base, np.float32(tissue["fat"]), where=fat_ring)
    np.copyto(fine_amp, np.float32(_TEXTURE["fat"]), where=fat_ring)
    np.copyto(grain_amp, np.float32(0.0), where=(body & ~cavity).view(bool))
    np.copyto(base, np.float32(0.0), where=body == 0)  # air around the body
    blocked = _paint_spine(anatomy, canvas, z, base, fine_amp, grain_amp)

    allowed = cavity & ~blocked
    masks = {"large_bowel": canvas.mask(), "small_bowel": canvas.mask(), "stomach": canvas.mask()}
    if stomach is not None:
        masks["stomach"] = stomach & allowed
        allowed &= ~stomach
    if large is not None:
        masks["large_bowel"] = large[0] & ~large[1] & allowed
        allowed &= ~large[0]
    if small is not None:
        masks["small_bowel"] = small[0] & allowed

    image = fine_amp
    image *= textures.fine
    image += 1.0
    image *= base
    grain_amp *= textures.grain
    image += grain_amp
    np.maximum(image, 0.0, out=image)
    return image, masks


def _paint_bowel(
    tube: Tube,
    canvas: Canvas,
    z: float,
    base: np.ndarray,
    fine_amp: np.ndarray,
    grain_amp: np.ndarray,
    tissue: dict[str, float],
) -> tuple[np.ndarray, np.ndarray] | None:
    """Paint a bowel tube (wall, then each sphere's contents); return ``(outer, holes)`` masks.

    ``holes`` is where a hollow (wall-only labelled) segment's lumen is; ``None`` if the plane
    misses the tube.
    """
    cut = canvas.section(tube, z)
    if cut is None:
        return None
    outer = canvas.mask()
    _discs(outer, cut.centers, cut.outer, 1.0)
    where = outer.view(bool)
    np.copyto(base, np.float32(tissue["gut_wall"]), where=where)
    np.copyto(fine_amp, np.float32(_TEXTURE["organ"]), where=where)
    np.copyto(grain_amp, np.float32(0.0), where=where)
    # Filled lumens first, then the unlabelled (gas) ones, so every hole in the label shows gas
    # even where a neighbouring filled sphere's lumen reaches into it.
    hollow = tube.hollow[cut.index]
    order = np.argsort(hollow, kind="stable").tolist()
    centers = [cut.centers[i] for i in order]
    lumen = [cut.lumen[i] for i in order]
    index = cut.index[order]
    _discs(base, centers, lumen, tube.content[index].tolist())
    # Grain only where it shows (stool, chyme): most spheres are fluid or collapsed.
    grainy = [i for i, m in enumerate(tube.mottle[index].tolist()) if m > 0.08]
    if grainy:
        mottle = tube.mottle[index[grainy]].tolist()
        _discs(grain_amp, [centers[i] for i in grainy], [lumen[i] for i in grainy], mottle)
    holes = canvas.mask()
    first = len(order) - int(hollow.sum())
    if first < len(order):
        _discs(holes, centers[first:], lumen[first:], 1.0)
    return outer, holes


def _paint_stomach(
    anatomy: Anatomy,
    canvas: Canvas,
    z: float,
    base: np.ndarray,
    fine_amp: np.ndarray,
    grain_amp: np.ndarray,
    rows: np.ndarray,
) -> np.ndarray | None:
    """Paint the stomach (wall, contents, gas anterior of the air-fluid level); return its mask."""
    tube = anatomy.stomach
    cut = canvas.section(tube, z)
    if cut is None:
        return None
    outer, lumen = canvas.mask(), canvas.mask()
    _discs(outer, cut.centers, cut.outer, 1.0)
    _discs(lumen, cut.centers, cut.lumen, 1.0)
    tissue = anatomy.tissue
    np.copyto(base, np.float32(tissue["gut_wall"]), where=outer.view(bool))
    np.copyto(fine_amp, np.float32(0.12), where=outer.view(bool))  # rugal folds
    np.copyto(grain_amp, np.float32(0.0), where=outer.view(bool))
    content = float(tube.content[cut.index].mean())
    mottle = float(tube.mottle[cut.index].mean())
    gas_row = canvas.origin[1] + anatomy.stomach_gas_y / canvas.spacing
    gas = lumen & (rows < gas_row)
    fluid = (lumen & ~gas).view(bool)
    np.copyto(base, np.float32(content), where=fluid)
    np.copyto(fine_amp, np.float32(0.03), where=lumen.view(bool))
    np.copyto(grain_amp, np.float32(mottle), where=fluid)
    np.copyto(base, np.float32(tissue["gas"]), where=gas.view(bool))
    return outer


def _paint_spine(
    anatomy: Anatomy,
    canvas: Canvas,
    z: float,
    base: np.ndarray,
    fine_amp: np.ndarray,
    grain_amp: np.ndarray,
) -> np.ndarray:
    """Paint the back muscles, vertebra (the sacrum low down) and spinal canal; return their mask.

    They sit behind everything, so the mask is taken out of every label.
    """
    tissue = anatomy.tissue
    sx, sy = anatomy.scale
    back = anatomy.back_y
    blocked = canvas.mask()
    below = float(np.clip((anatomy.pelvis_z - z) / 50.0, 0.0, 1.0))
    body_rx = (20.0 + 24.0 * below) * sx  # the vertebral body widens into the sacrum
    # The back muscles straddle the cavity's back edge; the vertebral body bulges into the cavity.
    vertebra_y = back - 44.0 * sy
    shapes = [
        # (x, y, rx, ry, angle, value, texture) in mm, painted in this order
        (-27 * sx, back + 2 * sy, 23 * sx, 19 * sy, 12, "muscle", _TEXTURE["muscle"]),
        (27 * sx, back + 2 * sy, 23 * sx, 19 * sy, -12, "muscle", _TEXTURE["muscle"]),
        (0.0, back + 2 * sy, 4 * sx, 15 * sy, 0, "bone", 0.0),
        (0.0, vertebra_y, body_rx, 17 * sy, 0, "bone", 0.0),
        (0.0, vertebra_y, body_rx - 2.5, 17 * sy - 2.5, 0, "marrow", _TEXTURE["organ"]),
        (0.0, back - 18 * sy, 8 * sx, 7 * sy, 0, "fluid", 0.0),
        (0.0, back - 18 * sy, 4 * sx, 3.5 * sy, 0, "cord", 0.0),
    ]
    for x, y, rx, ry, angle, name, texture in shapes:
        canvas.ellipse(base, x, y, rx, ry, tissue[name], angle)
        canvas.ellipse(fine_amp, x, y, rx, ry, texture, angle)
        canvas.ellipse(grain_amp, x, y, rx, ry, 0.0, angle)
        canvas.ellipse(blocked, x, y, rx, ry, 1, angle)
    return blocked


class ScanRenderer:
    """Renders the slices of one case-day: textures, bias, gain and noise drawn once per scan.

    Args:
        anatomy: the case-day's anatomy.
        width, height, spacing: the scan's pixel grid.
        rng: the case-day's generator (textures, bias, noise).
        gain: 16-bit counts per unit of relative signal (subcutaneous fat is about 1).
    """

    def __init__(
        self,
        anatomy: Anatomy,
        width: int,
        height: int,
        spacing: float,
        rng: np.random.Generator,
        gain: float,
    ) -> None:
        self.anatomy = anatomy
        self.canvas = Canvas(width, height, spacing, anatomy.body_center)
        self.rng = rng
        self.shape = (height, width)
        # Texture volumes at low resolution, interpolated along z and upsampled per slice: the
        # fine one has blobs of several pixels (fat lobules), the grain one of two or three
        # (stool, food), pushed towards +-1 by tanh so stool looks bubbly, not cloudy.
        self.fine = rng.standard_normal((40, 40, 40)).astype(np.float32)
        self.grain = np.tanh(1.6 * rng.standard_normal((72, 96, 96))).astype(np.float32)
        x = np.linspace(-1.0, 1.0, width, dtype=np.float32)[None, :]
        y = np.linspace(-1.0, 1.0, height, dtype=np.float32)[:, None]
        # Smooth multiplicative bias (coil sensitivity): exp of a random quadratic in x and y,
        # times a drift along z.
        a, b, c, d, e, self.drift = rng.normal(0.0, [0.2, 0.2, 0.15, 0.15, 0.1, 0.2])
        self.bias = np.exp(a * x + b * y + c * x**2 + d * y**2 + e * x * y).astype(np.float32)
        self.gain = gain
        self.sigma = np.float32(rng.uniform(0.04, 0.07) * gain)
        self.rows = np.broadcast_to(np.arange(height, dtype=np.float32)[:, None], self.shape)

    def _textures(self, t: float) -> SliceTextures:
        size = (self.shape[1], self.shape[0])
        return SliceTextures(
            fine=cv2.resize(_plane(self.fine, t), size, interpolation=cv2.INTER_CUBIC),
            grain=cv2.resize(_plane(self.grain, t), size, interpolation=cv2.INTER_LINEAR),
        )

    def render(self, t: float) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """The slice at relative height ``t`` in (0, 1): ``(uint16 pixels, masks by class)``."""
        z = t * Z_EXTENT_MM
        image, masks = render_slice(self.anatomy, self.canvas, z, self._textures(t), self.rows)
        image = cv2.GaussianBlur(image, (0, 0), 0.8)  # partial-volume softening of the edges
        image *= self.bias * np.float32(self.gain * math.exp(self.drift * t))
        # Rician noise: the magnitude of the signal plus complex Gaussian noise.
        noise = self.rng.standard_normal((2, *self.shape), dtype=np.float32)
        noise *= self.sigma
        noise[0] += image
        magnitude = np.hypot(noise[0], noise[1])
        return np.clip(np.rint(magnitude), 0, 65535).astype(np.uint16), masks


def _plane(volume: np.ndarray, t: float) -> np.ndarray:
    """Linear interpolation of a (D, h, w) volume at relative depth ``t``."""
    position = t * (volume.shape[0] - 1)
    below = min(int(position), volume.shape[0] - 2)
    weight = position - below
    return (1 - weight) * volume[below] + weight * volume[below + 1]
