"""Benchmark: the competition Hausdorff term, ``uwm_d2.core.metrics`` vs a brute-force reference.

Four synthetic case-days of full size (144 x 266 x 266), three organs each with realistic shapes
(a stomach-like blob, a tube-shaped large bowel, clusters of small-bowel loops); predictions are the
truth shifted, dilated or eroded, with a few slices dropped and a few false-positive blobs added,
as a trained model's output would be. The reference is the obvious exact implementation:
``scipy.spatial.distance.directed_hausdorff`` both ways on every foreground voxel's coordinates,
normalized by the volume diagonal. Both run in the same process on the same data; the table shows
seconds and the largest difference between the two sets of values. Run::

    .venv/bin/python benchmarks/bench_metric.py [--quick] [--brute-budget SECONDS]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage
from scipy.spatial.distance import directed_hausdorff

# Run as a plain script from anywhere: the package is used from the checkout, not installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from uwm_d2.core.ids import CLASSES
from uwm_d2.core.metrics import normalized_hausdorff, score_volumes

Volumes = dict[tuple[str, str], tuple[np.ndarray, np.ndarray]]


def brute_force_normalized_hausdorff(pred: np.ndarray, truth: np.ndarray) -> float:
    """Reference: all-voxel symmetric Hausdorff by ``directed_hausdorff``, competition rules."""
    pred_any, truth_any = pred.any(), truth.any()
    if not pred_any and not truth_any:
        return 0.0
    if pred_any != truth_any:
        return 1.0
    p = np.argwhere(pred).astype(np.float64)
    g = np.argwhere(truth).astype(np.float64)
    distance = max(directed_hausdorff(p, g)[0], directed_hausdorff(g, p)[0])
    return min(distance / math.sqrt(sum(side * side for side in pred.shape)), 1.0)


def _smooth_blobs(
    shape: tuple[int, int, int], rng: np.random.Generator, envelope: np.ndarray, sigma: float
) -> np.ndarray:
    """Organic shapes: smoothed noise thresholded inside an envelope (keeps the top ~45%)."""
    noise = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
    return envelope & (noise > np.quantile(noise[envelope], 0.55))


def _ellipsoid(shape: tuple[int, int, int], centre: np.ndarray, radii: np.ndarray) -> np.ndarray:
    grid = np.ogrid[: shape[0], : shape[1], : shape[2]]
    return sum(((axis - c) / r) ** 2 for axis, c, r in zip(grid, centre, radii, strict=True)) <= 1


def make_case(shape: tuple[int, int, int], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Truth volumes of one case-day: organs span only part of the slices, as in the data."""
    depth, height, width = shape
    scale = np.array(shape, dtype=np.float64)
    # Stomach: one large, lumpy ellipsoid in the upper part of the scan.
    centre = scale * [0.35, 0.35, 0.6] + rng.normal(0, 0.02, 3) * scale
    envelope = _ellipsoid(shape, centre, scale * [0.12, 0.12, 0.1])
    core = _ellipsoid(shape, centre, scale * [0.08, 0.08, 0.07])
    stomach = ndimage.binary_opening(_smooth_blobs(shape, rng, envelope, 2.0) | core)
    # Large bowel: a thick tube along a horseshoe (up one side, across, down the other).
    t = np.linspace(0, math.pi, 400)
    path = np.stack(
        [
            depth * (0.55 + 0.1 * np.sin(3 * t + rng.uniform(0, 6))),
            height * (0.62 - 0.25 * np.sin(t)),
            width * (0.5 - 0.28 * np.cos(t)),
        ],
        axis=1,
    )
    seeds = np.zeros(shape, dtype=bool)
    index = np.clip(np.round(path).astype(int), 0, np.array(shape) - 1)
    seeds[tuple(index.T)] = True
    radius = 0.035 * min(height, width)
    distance = ndimage.distance_transform_edt(~seeds, sampling=(height / depth * 0.6, 1.0, 1.0))
    large_bowel = distance <= radius
    # Small bowel: clusters of loops in the centre-lower abdomen.
    centre = scale * [0.6, 0.6, 0.5] + rng.normal(0, 0.02, 3) * scale
    envelope = _ellipsoid(shape, centre, scale * rng.uniform([0.15, 0.12, 0.13], [0.2, 0.17, 0.18]))
    small_bowel = _smooth_blobs(shape, rng, envelope & ~large_bowel, 1.5)
    return {"large_bowel": large_bowel, "small_bowel": small_bowel, "stomach": stomach}


def perturb(truth: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A plausible prediction: shifted, grown or shrunk, end slices missing, stray blobs."""
    pred = np.roll(truth, tuple(rng.integers(-2, 3, size=3)), axis=(0, 1, 2))
    operation = rng.integers(0, 3)
    if operation == 1:
        pred = ndimage.binary_dilation(pred, iterations=int(rng.integers(1, 3)))
    elif operation == 2:
        pred = ndimage.binary_erosion(pred)
    slices = np.flatnonzero(pred.any(axis=(1, 2)))
    if slices.size > 4:
        pred[slices[: rng.integers(0, 3)]] = False
        pred[slices[slices.size - rng.integers(0, 3) :]] = False
    for _ in range(rng.integers(0, 4)):  # false positives somewhere in the body
        z, y, x = (int(rng.integers(int(0.2 * side), int(0.8 * side))) for side in truth.shape)
        pred[z : z + 2, y : y + 5, x : x + 5] = True
    return pred


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4 case-days of 40 x 128 x 128")
    parser.add_argument(
        "--brute-budget",
        type=float,
        default=180.0,
        help="stop starting brute-force pairs after this many seconds (default 180)",
    )
    args = parser.parse_args()
    shape = (40, 128, 128) if args.quick else (144, 266, 266)
    rng = np.random.default_rng(2022)

    start = time.perf_counter()
    volumes: Volumes = {}
    for case in range(4):
        truths = make_case(shape, rng)
        for class_name in CLASSES:
            truth = truths[class_name]
            volumes[(f"case{case + 1}_day0", class_name)] = (perturb(truth, rng), truth)
    print(
        f"built 4 case-days of {shape[0]} x {shape[1]} x {shape[2]} in "
        f"{time.perf_counter() - start:.1f} s"
    )
    print(
        f"{'case_day':<11} {'class':<12} {'|P|':>8} {'|G|':>8} {'fast':>9} {'brute':>9}"
        f" {'fast s':>7} {'brute s':>8}"
    )

    fast_total = brute_total = 0.0
    differences = []
    for (case_day, class_name), (pred, truth) in volumes.items():
        start = time.perf_counter()
        fast = normalized_hausdorff(pred, truth)
        fast_seconds = time.perf_counter() - start
        fast_total += fast_seconds
        brute_text, brute_seconds_text = "skipped", "-"
        if brute_total < args.brute_budget:
            start = time.perf_counter()
            brute = brute_force_normalized_hausdorff(pred, truth)
            brute_seconds = time.perf_counter() - start
            brute_total += brute_seconds
            differences.append(abs(fast - brute))
            brute_text, brute_seconds_text = f"{brute:.6f}", f"{brute_seconds:.3f}"
        print(
            f"{case_day:<11} {class_name:<12} {int(pred.sum()):>8} {int(truth.sum()):>8} "
            f"{fast:>9.6f} {brute_text:>9} {fast_seconds:>7.3f} {brute_seconds_text:>8}"
        )

    start = time.perf_counter()
    result = score_volumes(volumes)
    score_seconds = time.perf_counter() - start
    compared = len(differences)
    print()
    print(f"pairs compared with brute force: {compared} of {len(volumes)}")
    print(f"normalized Hausdorff, fast (all {len(volumes)} pairs): {fast_total:8.3f} s")
    print(f"normalized Hausdorff, brute force ({compared} pairs):   {brute_total:8.3f} s")
    if compared == len(volumes):
        print(f"speedup: {brute_total / fast_total:.1f}x")
    print(f"max |fast - brute|: {max(differences):.3g}")
    print(
        f"score_volumes (Dice, Hausdorff, 3D Dice, HD95 mm; all pairs): {score_seconds:.3f} s -> "
        f"score {result['score']:.4f}, dice {result['dice']:.4f}, "
        f"hausdorff {result['hausdorff']:.4f}"
    )


if __name__ == "__main__":
    main()
