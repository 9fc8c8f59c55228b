"""The competition's run-length encoding of binary masks.

Format: ``"start length start length ..."`` where starts are **1-based** pixel numbers in
**row-major (C) order** of the ``(H, W)`` image, runs sorted and not overlapping; an empty mask is
the empty string. This is *not* COCO's RLE (column-major, compressed ``counts``): never mix the two.
"""

from __future__ import annotations

import numpy as np

from uwm_d2.core.errors import UWMInputError


def rle_encode(mask: np.ndarray) -> str:
    """Encode a 2D mask (any dtype; nonzero = foreground) as competition RLE.

    Vectorized: run boundaries come from one ``np.diff`` over the padded, row-major flattened mask.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"rle_encode expects a 2D (H, W) mask, got shape {mask.shape}")
    flat = np.zeros(mask.size + 2, dtype=np.int8)
    flat[1:-1] = mask.reshape(-1) != 0  # reshape(-1) of a C-ordered view is row-major
    # Positions where the value changes; with the zero padding they alternate start, end.
    changes = np.flatnonzero(flat[1:] != flat[:-1])
    if changes.size == 0:
        return ""
    runs = changes.reshape(-1, 2)
    runs[:, 1] -= runs[:, 0]  # end -> length
    runs[:, 0] += 1  # 0-based change index -> 1-based start pixel
    return " ".join(runs.reshape(-1).astype(str).tolist())


def parse_rle(rle: str, num_pixels: int) -> tuple[np.ndarray, np.ndarray]:
    """Validate an RLE string and return its ``(starts, lengths)`` with 0-based starts.

    Raises:
        UWMInputError: odd token count, non-integer token, start below 1, non-positive length,
            a run past ``num_pixels``, or runs that are unsorted or overlap. The message shows
            (a prefix of) the string.
    """
    if not isinstance(rle, str):
        if rle is None or (isinstance(rle, float) and np.isnan(rle)):
            rle = ""
        else:
            raise UWMInputError(f"RLE must be a string, got {type(rle).__name__} {rle!r}")
    shown = rle if len(rle) <= 60 else rle[:57] + "..."
    tokens = rle.split()
    if not tokens:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    if len(tokens) % 2:
        raise UWMInputError(f"RLE {shown!r} has an odd number of tokens ({len(tokens)})")
    if not all(token.isdigit() for token in tokens):
        bad = next(token for token in tokens if not token.isdigit())
        raise UWMInputError(f"RLE {shown!r} has a non-integer token {bad!r}")
    values = np.array(tokens, dtype=np.int64).reshape(-1, 2)
    starts, lengths = values[:, 0], values[:, 1]
    if (starts < 1).any():
        raise UWMInputError(f"RLE {shown!r} has a start below 1 (starts are 1-based)")
    if (lengths < 1).any():
        raise UWMInputError(f"RLE {shown!r} has a non-positive run length")
    ends = starts - 1 + lengths  # exclusive, 0-based
    if ends[-1] > num_pixels or (ends > num_pixels).any():
        raise UWMInputError(f"RLE {shown!r} runs past the image's {num_pixels} pixels")
    if (starts[1:] - 1 < ends[:-1]).any():
        raise UWMInputError(f"RLE {shown!r} has unsorted or overlapping runs")
    return starts - 1, lengths


def rle_decode(rle: str, shape: tuple[int, int]) -> np.ndarray:
    """Decode competition RLE into a ``uint8`` mask of ``shape = (H, W)`` (1 = foreground).

    Raises:
        UWMInputError (a ``ValueError``): for any malformed string, see :func:`parse_rle`.
    """
    height, width = (int(side) for side in shape)
    starts, lengths = parse_rle(rle, height * width)
    # Mark +1 at each run start and -1 after each run end; the running sum is the mask.
    marks = np.zeros(height * width + 1, dtype=np.int8)
    np.add.at(marks, starts, 1)
    np.add.at(marks, starts + lengths, -1)
    return np.cumsum(marks[:-1], dtype=np.int8).astype(np.uint8).reshape(height, width)
