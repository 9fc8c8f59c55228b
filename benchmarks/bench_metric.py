"""Benchmark: the competition Hausdorff term, ``uwm_d2.core.metrics`` vs a brute-force reference.

Four synthetic case-days of full size (144 x 266 x 266), three organs each with realistic shapes
(a stomach-like blob, a tube-shaped large bowel, clusters of small-bowel loops), scored twice:

* ``clean``: predictions near the truth, as a trained model's output would be: the truth shifted
  by up to 2 voxels, grown or shrunk, a few end slices dropped;
* ``far-blob``: the same predictions plus 1-3 stray false-positive blobs of a few voxels anywhere
  in the volume (the case that made the bounding box of ``P ∪ G`` the whole scan).

The reference is the obvious exact implementation: ``scipy.spatial.distance.directed_hausdorff``
both ways on every foreground voxel's coordinates, normalized by the volume diagonal. For context
the table also times the previous implementation (Euclidean distance transforms on the bounding
box of ``P ∪ G``). All run in the same process on the same data, so the ratios hold on a busy
machine; the run fails if any value differs from the reference by more than 1e-9. Run::

    .venv/bin/python benchmarks/bench_metric.py [--quick] [--brute-budget SECONDS]
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import scipy
from scipy import ndimage
from scipy.spatial.distance import directed_hausdorff

# Run as a plain script from anywhere: the package is used from the checkout, not installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from uwm_d2.core.ids import CLASSES
from uwm_d2.core.readings import PROJECT, score_volumes

Volumes = dict[tuple[str, str], tuple[np.ndarray, np.ndarray]]

#: Largest difference from the reference the run accepts.
TOLERANCE = 1e-9


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


def previous_normalized_hausdorff(pred: np.ndarray, truth: np.ndarray) -> float:
    """The previous implementation: distance transforms on the bounding box of ``P ∪ G``."""
    if not pred.any() and not truth.any():
        return 0.0
    if pred.any() != truth.any():
        return 1.0
    union = pred | truth
    box = []
    for axis in range(union.ndim):
        hits = np.flatnonzero(union.any(axis=tuple(a for a in range(union.ndim) if a != axis)))
        box.append(slice(hits[0], hits[-1] + 1))
    p, g = pred[tuple(box)], truth[tuple(box)]
    directed = []
    for source, target in ((p, g), (g, p)):
        outside = source & ~target
        directed.append(
            float(ndimage.distance_transform_edt(~target)[outside].max()) if outside.any() else 0.0
        )
    return min(max(directed) / math.sqrt(sum(side * side for side in pred.shape)), 1.0)


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


def near_prediction(truth: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A plausible clean prediction: shifted, grown or shrunk, end slices missing."""
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
    return pred


def with_stray_blobs(pred: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``pred`` plus 1-3 false-positive blobs of a few voxels anywhere in the volume."""
    pred = pred.copy()
    for _ in range(rng.integers(1, 4)):
        size = rng.integers(1, 3, size=3)
        z, y, x = (
            int(rng.integers(0, side - extent))
            for side, extent in zip(pred.shape, size, strict=True)
        )
        pred[z : z + size[0], y : y + size[1], x : x + size[2]] = True
    return pred


def run_kind(kind: str, volumes: Volumes, brute_budget: float) -> dict[str, float]:
    """Time every pair of one kind; the reference runs until ``brute_budget`` seconds are spent."""
    print(f"\n== {kind}")
    print(
        f"{'case_day':<11} {'class':<12} {'|P|':>8} {'|G|':>8} {'ours':>9} {'brute':>9}"
        f" {'ours s':>7} {'brute s':>8} {'prev s':>7}"
    )
    totals = {"ours": 0.0, "ours_compared": 0.0, "brute": 0.0, "previous": 0.0}
    compared, worst, slowest_ratio = 0, 0.0, math.inf
    for (case_day, class_name), (pred, truth) in volumes.items():
        start = time.perf_counter()
        ours = PROJECT.hausdorff(pred, truth)
        ours_seconds = time.perf_counter() - start
        totals["ours"] += ours_seconds
        start = time.perf_counter()
        previous = previous_normalized_hausdorff(pred, truth)
        previous_seconds = time.perf_counter() - start
        totals["previous"] += previous_seconds
        worst = max(worst, abs(ours - previous))
        brute_text, brute_seconds_text = "skipped", "-"
        if totals["brute"] < brute_budget:
            start = time.perf_counter()
            brute = brute_force_normalized_hausdorff(pred, truth)
            brute_seconds = time.perf_counter() - start
            totals["brute"] += brute_seconds
            totals["ours_compared"] += ours_seconds
            slowest_ratio = min(slowest_ratio, brute_seconds / ours_seconds)
            compared += 1
            worst = max(worst, abs(ours - brute))
            brute_text, brute_seconds_text = f"{brute:.6f}", f"{brute_seconds:.3f}"
        print(
            f"{case_day:<11} {class_name:<12} {int(pred.sum()):>8} {int(truth.sum()):>8} "
            f"{ours:>9.6f} {brute_text:>9} {ours_seconds:>7.3f} {brute_seconds_text:>8} "
            f"{previous_seconds:>7.3f}"
        )
    timings = {}
    for label, options in (
        ("score_volumes(clinical=False)", {"clinical": False}),
        ("score_volumes()", {}),
        ("score_volumes(readings='all')", {"readings": "all"}),
    ):
        start = time.perf_counter()
        score_volumes(volumes, **options)
        timings[label] = time.perf_counter() - start
    return {
        **totals,
        "compared": compared,
        "pairs": len(volumes),
        "worst": worst,
        "slowest_ratio": slowest_ratio,
        **timings,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4 case-days of 40 x 128 x 128")
    parser.add_argument(
        "--brute-budget",
        type=float,
        default=120.0,
        help="per kind, stop starting brute-force pairs after this many seconds (default 120)",
    )
    args = parser.parse_args()
    shape = (40, 128, 128) if args.quick else (144, 266, 266)
    rng = np.random.default_rng(2022)

    start = time.perf_counter()
    clean: Volumes = {}
    far: Volumes = {}
    for case in range(4):
        truths = make_case(shape, rng)
        for class_name in CLASSES:
            truth = truths[class_name]
            pred = near_prediction(truth, rng)
            clean[(f"case{case + 1}_day0", class_name)] = (pred, truth)
            far[(f"case{case + 1}_day0", class_name)] = (with_stray_blobs(pred, rng), truth)
    print(
        f"built 4 case-days of {shape[0]} x {shape[1]} x {shape[2]} in "
        f"{time.perf_counter() - start:.1f} s; {os.cpu_count()} CPUs, {platform.machine()}, "
        f"python {platform.python_version()}, numpy {np.__version__}, scipy {scipy.__version__}"
    )

    results = {"clean": run_kind("clean", clean, args.brute_budget)}
    results["far-blob"] = run_kind("far-blob", far, args.brute_budget)

    print(
        "\nnormalized Hausdorff, seconds for the pairs compared with the reference ('worst pair':"
        " the smallest per-pair ratio brute / ours):"
    )
    print(
        f"{'kind':<9} {'pairs':>7} {'ours':>8} {'brute':>9} {'speedup':>8} {'worst pair':>11} "
        f"{'ours all':>9} {'previous':>9} {'max |diff|':>11}"
    )
    worst = 0.0
    for kind, row in results.items():
        worst = max(worst, row["worst"])
        speedup = row["brute"] / row["ours_compared"] if row["compared"] else math.nan
        print(
            f"{kind:<9} {row['compared']:>3} of {row['pairs']:<2} {row['ours_compared']:>7.3f} "
            f"{row['brute']:>9.3f} {speedup:>7.0f}x {row['slowest_ratio']:>10.1f}x "
            f"{row['ours']:>9.3f} {row['previous']:>9.3f} {row['worst']:>11.2g}"
        )
    print("\nscore_volumes over all pairs, seconds:")
    for kind, row in results.items():
        print(
            f"{kind:<9} " + ", ".join(f"{label} {row[label]:.3f}" for label in row if "(" in label)
        )
    if worst > TOLERANCE:
        print(f"FAILED: a value differs from the reference by {worst:.3g} > {TOLERANCE}")
        sys.exit(1)


if __name__ == "__main__":
    main()
