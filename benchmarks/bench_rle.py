"""Benchmark: competition RLE encode/decode per slice, ``uwm_d2.core.rle`` vs the community version.

The baseline is the popular Kaggle numpy snippet (flatten, pad with zeros, ``np.where`` on the
differences; decode by ``split()`` and a Python loop over runs), written out below. It does no
validation; ours validates every string, so the comparison is conservative for us.

Masks are realistic: a handful of smooth organ-like blobs per slice (and empty slices, which are
57% of the data), for each scan size in the data. Run::

    .venv/bin/python benchmarks/bench_rle.py [--slices N]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

# Run as a plain script from anywhere: the package is used from the checkout, not installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from uwm_d2.core.rle import rle_decode, rle_encode

#: (H, W) of every scan size in the training data.
SHAPES: tuple[tuple[int, int], ...] = ((266, 266), (310, 360), (276, 276), (234, 234))


def community_encode(img: np.ndarray) -> str:
    """Community baseline: the widely copied Kaggle ``rle_encode`` (row-major variant)."""
    pixels = img.flatten()
    pixels = np.concatenate([[0], pixels, [0]])
    runs = np.where(pixels[1:] != pixels[:-1])[0] + 1
    runs[1::2] -= runs[::2]
    return " ".join(str(x) for x in runs)


def community_decode(mask_rle: str, shape: tuple[int, int]) -> np.ndarray:
    """Community baseline: the widely copied Kaggle ``rle_decode`` (row-major variant)."""
    s = mask_rle.split()
    starts, lengths = (np.asarray(x, dtype=int) for x in (s[0:][::2], s[1:][::2]))
    starts -= 1
    ends = starts + lengths
    img = np.zeros(shape[0] * shape[1], dtype=np.uint8)
    for lo, hi in zip(starts, ends, strict=True):
        img[lo:hi] = 1
    return img.reshape(shape)


def organ_masks(shape: tuple[int, int], count: int, rng: np.random.Generator) -> list[np.ndarray]:
    """``count`` slices: 40% empty, the rest 1-6 smooth blobs (ellipses, some hollow rings)."""
    height, width = shape
    masks = []
    for _ in range(count):
        mask = np.zeros(shape, dtype=np.uint8)
        if rng.random() >= 0.4:
            for _ in range(rng.integers(1, 7)):
                centre = (int(rng.integers(40, width - 40)), int(rng.integers(40, height - 40)))
                axes = (int(rng.integers(5, 35)), int(rng.integers(5, 35)))
                cv2.ellipse(mask, centre, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
                if rng.random() < 0.3:  # a ring: bowel loops are often hollow
                    inner = (max(axes[0] // 2, 1), max(axes[1] // 2, 1))
                    cv2.ellipse(mask, centre, inner, 0.0, 0, 360, 0, -1)
        masks.append(mask)
    return masks


def per_slice_us(function: Callable[[object], object], items: list, repeats: int = 5) -> float:
    """Best-of-``repeats`` mean time per item, in microseconds."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for item in items:
            function(item)
        best = min(best, (time.perf_counter() - start) / len(items))
    return best * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=500, help="slices per scan size")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(f"RLE per slice, {args.slices} slices per size (40% empty), best of 5, microseconds")
    header = (
        f"{'H x W':>9} {'runs':>5} | {'enc ours':>8} {'enc comm':>8} {'speedup':>7} | "
        f"{'dec ours':>8} {'dec comm':>8} {'speedup':>7}"
    )
    print(header)
    print("-" * len(header))
    for shape in SHAPES:
        masks = organ_masks(shape, args.slices, rng)
        strings = [rle_encode(mask) for mask in masks]
        # Same strings from both encoders, and both decoders give back the masks: the table
        # compares equal work.
        assert strings == [community_encode(mask) for mask in masks]
        for mask, text in zip(masks, strings, strict=True):
            assert np.array_equal(rle_decode(text, shape), mask)
            assert np.array_equal(community_decode(text, shape), mask)
        mean_runs = np.mean([len(text.split()) // 2 for text in strings])
        enc_ours = per_slice_us(rle_encode, masks)
        enc_comm = per_slice_us(community_encode, masks)
        dec_ours = per_slice_us(lambda text, shape=shape: rle_decode(text, shape), strings)
        dec_comm = per_slice_us(lambda text, shape=shape: community_decode(text, shape), strings)
        print(
            f"{shape[0]:>4}x{shape[1]:<4} {mean_runs:>5.1f} | {enc_ours:>8.1f} {enc_comm:>8.1f} "
            f"{enc_comm / enc_ours:>6.2f}x | {dec_ours:>8.1f} {dec_comm:>8.1f} "
            f"{dec_comm / dec_ours:>6.2f}x"
        )


if __name__ == "__main__":
    main()
