"""Synthetic out-of-fold maps and matching truth, for tests and benchmarks/bench_rule_search.py.

Each case-day gets organ-like blobs per class (ellipsoids whose centre drifts and whose radii
wobble from slice to slice, absent from some case-days), a "model" map that finds them slightly
shifted with a soft, noisy edge, and stray false positives: blobs on one or two slices, some in
case-days where the class is absent. The truth goes to a ``train.csv`` (row-major RLE), the maps
to a probability folder (:mod:`uwm_d2.core.probability_files`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from uwm_d2.core.atomic import atomic_path
from uwm_d2.core.ids import CLASSES, format_slice_id
from uwm_d2.core.probability_files import ProbabilityWriter
from uwm_d2.core.rle import rle_encode


@dataclass(frozen=True)
class SyntheticScan:
    """One synthetic case-day: ``depth`` slices of ``height x width``, predicted by ``fold``."""

    case: int
    day: int
    depth: int
    height: int
    width: int
    fold: int


def _organ(rng: np.random.Generator, scan: SyntheticScan) -> tuple[slice, np.ndarray]:
    """``(z range, field)``: the slices one organ spans and its "inside-ness" there, a
    ``(span, H, W)`` float32 that is positive inside and falls off quadratically outside."""
    depth, height, width = scan.depth, scan.height, scan.width
    span = int(rng.integers(max(3, depth // 6), max(4, depth // 2)))
    first = int(rng.integers(0, depth - span + 1))
    centre = np.array([rng.uniform(0.3, 0.7) * height, rng.uniform(0.3, 0.7) * width])
    radii = np.array([rng.uniform(0.06, 0.16) * height, rng.uniform(0.06, 0.16) * width])
    field = np.empty((span, height, width), dtype=np.float32)
    yy, xx = np.ogrid[:height, :width]
    drift = rng.normal(0, 0.6, size=(span, 2)).cumsum(axis=0)
    for offset in range(span):
        taper = np.sin(np.pi * (offset + 0.5) / span) ** 0.5  # smaller at both ends
        ry, rx = radii * taper * rng.uniform(0.9, 1.1, 2)
        cy, cx = centre + drift[offset]
        field[offset] = 1.0 - ((yy - cy) / max(ry, 1.0)) ** 2 - ((xx - cx) / max(rx, 1.0)) ** 2
    return slice(first, first + span), field


def _stray(rng: np.random.Generator, scan: SyntheticScan, maps: np.ndarray) -> None:
    """Add one stray blob on one or two slices to ``maps`` ``(D, H, W)`` (in place)."""
    z = int(rng.integers(0, scan.depth))
    slices = [z] if rng.random() < 0.7 or z + 1 >= scan.depth else [z, z + 1]
    radius = rng.uniform(2.0, 6.0)
    cy, cx = rng.uniform(0.1, 0.9) * scan.height, rng.uniform(0.1, 0.9) * scan.width
    yy, xx = np.ogrid[: scan.height, : scan.width]
    blob = ((yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2) * np.float32(rng.uniform(0.55, 0.95))
    for index in slices:
        np.maximum(maps[index], blob, out=maps[index])


def case_day_maps(scan: SyntheticScan, seed: int, stray_rate: float = 0.8):
    """``(truth (D, C, H, W) bool, maps (D, C, H, W) float32)`` of one synthetic case-day."""
    rng = np.random.default_rng([seed, scan.case, scan.day])
    shape = (scan.depth, len(CLASSES), scan.height, scan.width)
    truth = np.zeros(shape, dtype=bool)
    maps = np.zeros(shape, dtype=np.float32)
    for class_index in range(len(CLASSES)):
        if rng.random() < 0.85:  # the organ is in this case-day
            span, field = _organ(rng, scan)
            truth[span, class_index] = field > 0
            shift = tuple(int(v) for v in rng.integers(-2, 3, 2))
            seen = np.roll(field, shift, axis=(1, 2)) * np.float32(rng.uniform(4.0, 8.0))
            near = seen > -6  # a soft, noisy edge near the organ; far away the map is 0
            seen[near] += rng.normal(0, 0.8, size=int(near.sum())).astype(np.float32)
            maps[span, class_index] = 1.0 / (1.0 + np.exp(-np.clip(seen, -30, 30)))
        while rng.random() < stray_rate:
            _stray(rng, scan, maps[:, class_index])
            stray_rate *= 0.5
    return truth, maps


def write_synthetic(
    out: str | os.PathLike,
    scans: Sequence[SyntheticScan],
    seed: int = 0,
    stray_rate: float = 0.8,
    progress=None,
) -> tuple[Path, Path]:
    """Write ``out/oof`` (a probability folder) and ``out/train.csv`` for ``scans``.

    Returns:
        ``(oof folder, train.csv)``.
    """
    out = Path(out)
    writer = ProbabilityWriter(out / "oof", "synthetic", tta=False, source={"seed": seed})
    lines = ["id,class,segmentation"]
    for scan in scans:
        truth, maps = case_day_maps(scan, seed, stray_rate)
        ids = [format_slice_id(scan.case, scan.day, z + 1) for z in range(scan.depth)]
        writer.write(f"case{scan.case}_day{scan.day}", ids, maps, fold=scan.fold)
        for depth, slice_id in enumerate(ids):
            for class_index, name in enumerate(CLASSES):
                lines.append(f"{slice_id},{name},{rle_encode(truth[depth, class_index])}")
        if progress is not None:
            progress.update(scan.depth)
    labels = out / "train.csv"
    with atomic_path(labels) as tmp_path:
        tmp_path.write_text("\n".join(lines) + "\n")
    return out / "oof", labels


def competition_like_scans(num_case_days: int, num_folds: int = 5, seed: int = 0) -> list:
    """Case-days shaped like the competition's train: 274 case-days of 144 or 80 slices
    (about 38,500 in all), mostly 266 x 266, some 310 x 360 and 234 x 234; grouped folds by case.

    Fewer case-days keep the same mix (``num_case_days`` of the 274).
    """
    rng = np.random.default_rng(seed)
    shapes = [(266, 266)] * 7 + [(310, 360), (234, 234)]
    scans, case = [], 0
    while len(scans) < num_case_days:
        case += 1
        height, width = shapes[int(rng.integers(0, len(shapes)))]
        for day in range(int(rng.integers(1, 6))):
            if len(scans) == num_case_days:
                break
            depth = 144 if rng.random() < 0.95 else 80
            scans.append(SyntheticScan(case, day, depth, height, width, case % num_folds))
    return scans
