"""How MLE-bench's grader decodes one RLE string: which strings it refuses, which pixels it sets.

The runs are read column-major (see :mod:`uwm_d2.evaluation.mlebench` for every quirk).
"""

from __future__ import annotations

import numpy as np

from uwm_d2.core.errors import UWMInputError

# numpy turns the parsed tokens into int64 arrays; beyond that MLE-bench fails (or wraps).
_INT64_MAX = 2**63 - 1


def mlebench_runs(rle: str, num_pixels: int) -> tuple[np.ndarray, np.ndarray]:
    """The runs MLE-bench's decoder sets for one RLE string, or why it refuses the string.

    Args:
        rle: the cell as MLE-bench sees it (empty and whitespace-only strings are empty masks).
        num_pixels: ``width * height`` of the image.

    Returns:
        ``(low, high)``: int64 arrays of 0-based half-open runs of the flat array, clipped to
        ``num_pixels`` and without overlaps (empty runs, wholly past the image, dropped).

    Raises:
        UWMInputError: a string MLE-bench's decoder fails on (the message gives the reason only;
            :func:`~uwm_d2.evaluation.mlebench.score_mlebench` adds the file and row).
    """
    if not isinstance(rle, str):
        raise UWMInputError(f"value {rle!r} is not a string (MLE-bench's decoder asserts one)")
    tokens = rle.split()
    empty = np.zeros(0, dtype=np.int64)
    if not tokens:
        return empty, empty.copy()
    values = []
    for token in tokens:
        try:
            values.append(int(token))  # Python's int, exactly as the grader parses tokens
        except ValueError:
            raise UWMInputError(f"token {token!r} is not an integer") from None
    starts, lengths = values[0::2], values[1::2]
    if starts != sorted(starts):
        raise UWMInputError("run starts are not sorted")
    if min(starts) <= 0 or (lengths and min(lengths) <= 0):
        raise UWMInputError("a start or length is not a positive integer")
    if (
        max(values) > _INT64_MAX
        or max((s + n for s, n in zip(starts, lengths, strict=False)), default=0) > _INT64_MAX
    ):
        raise UWMInputError("a value does not fit numpy's int64")
    if len(lengths) < len(starts):
        # ``starts + lengths`` is a numpy array plus a list: one length broadcasts to every start,
        # none leaves no runs at all, more than one cannot broadcast and raises.
        if len(lengths) > 1:
            raise UWMInputError(f"odd number of tokens ({len(values)})")
        if not lengths:
            return empty, empty.copy()
        lengths = lengths * len(starts)
    low = np.asarray(starts, dtype=np.int64) - 1
    high = low + np.asarray(lengths, dtype=np.int64)
    # Slicing a numpy array clips at its end, so runs past the image are cut, not refused.
    np.minimum(low, num_pixels, out=low)
    np.minimum(high, num_pixels, out=high)
    if low.size > 1:
        # The grader refuses a run if any pixel it covers inside the image is already set.
        # Starts are sorted, so that is exactly: a non-empty run beginning before the farthest
        # end reached by the runs before it.
        reached = np.maximum.accumulate(high)[:-1]
        if ((low[1:] < reached) & (low[1:] < high[1:])).any():
            raise UWMInputError("runs overlap")
    keep = low < high
    return low[keep], high[keep]


def mlebench_rle_decode(rle: str, height: int, width: int) -> np.ndarray:
    """Decode one RLE string as MLE-bench does: runs fill ``(width, height)``, then transposed.

    Args:
        rle: the string (see :func:`mlebench_runs` for what is refused).
        height, width: the image size in pixels (``image_height``, ``image_width``).

    Returns:
        ``(height, width)`` bool mask. For a row-major string of a non-square image the result is
        *not* the image's mask: that is the grader's quirk, reproduced.

    Raises:
        UWMInputError: a string MLE-bench refuses.
    """
    low, high = mlebench_runs(rle, height * width)
    return fill_runs(low, high, height, width)


def fill_runs(low: np.ndarray, high: np.ndarray, height: int, width: int) -> np.ndarray:
    flat = np.zeros(height * width, dtype=bool)
    if low.size:
        lengths = high - low
        # Every covered pixel at once: run k covers low[k] .. high[k] - 1 (runs are disjoint).
        offsets = np.repeat(low - (np.cumsum(lengths) - lengths), lengths)
        flat[np.arange(offsets.size) + offsets] = True
    return flat.reshape(width, height).T
