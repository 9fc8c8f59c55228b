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
    # str() of Python ints is faster than numpy astype(str) for a few hundred numbers.
    return " ".join(map(str, runs.reshape(-1).tolist()))


# Everything a well-formed RLE string may contain: ASCII digits and ASCII whitespace.
_RLE_CHARACTERS = b"0123456789 \t\n\r\x0b\x0c"


def _bad_token(rle: str) -> str:
    """The first token that is not plain ASCII digits (only called on an invalid string)."""
    for token in rle.split():
        if not (token.isascii() and token.isdigit()):
            return token
    # str.split() also splits on non-ASCII whitespace; name the offending character instead.
    return next(char for char in rle if char.encode("ascii", "replace") not in _RLE_CHARACTERS)


def parse_rle(rle: str, num_pixels: int) -> tuple[np.ndarray, np.ndarray]:
    """Validate an RLE string and return its ``(starts, lengths)`` with 0-based starts.

    Only ASCII digits and ASCII whitespace are accepted (no signs, no ``1_000``, no Unicode
    digits, all of which Python's ``int`` would take). ``None`` and NaN (pandas' empty cell) are
    read as the empty mask.

    Raises:
        UWMInputError: a non-string, odd token count, non-integer token, start below 1,
            non-positive length, a run past ``num_pixels``, or runs that are unsorted or overlap.
            The message shows (a prefix of) the string.
    """
    if not isinstance(rle, str):
        if rle is None or (isinstance(rle, float) and np.isnan(rle)):
            rle = ""
        else:
            raise UWMInputError(f"RLE must be a string, got {type(rle).__name__} {rle!r}")
    shown = rle if len(rle) <= 60 else rle[:57] + "..."
    empty = np.zeros(0, dtype=np.int64)
    if not rle.isascii() or rle.encode("ascii").translate(None, _RLE_CHARACTERS):
        raise UWMInputError(f"RLE {shown!r} has a non-integer token {_bad_token(rle)!r}")
    if not rle.strip():
        return empty, empty.copy()  # checked first: np.fromstring reads "   " as [0]
    # Only digits and whitespace are left, so the fast C parser sees nothing it could misread;
    # a number too large for int64 saturates and fails the range checks below.
    values = np.fromstring(rle, dtype=np.int64, sep=" ")
    if values.size % 2:
        raise UWMInputError(f"RLE {shown!r} has an odd number of tokens ({values.size})")
    starts, lengths = values[0::2] - 1, values[1::2]
    if (starts < 0).any():
        raise UWMInputError(f"RLE {shown!r} has a start below 1 (starts are 1-based)")
    if (lengths < 1).any():
        raise UWMInputError(f"RLE {shown!r} has a non-positive run length")
    # Compare before adding, so that saturated huge values cannot overflow into negatives.
    if (starts >= num_pixels).any() or (lengths > num_pixels - starts).any():
        raise UWMInputError(f"RLE {shown!r} runs past the image's {num_pixels} pixels")
    ends = starts + lengths  # exclusive, 0-based
    if (starts[1:] < ends[:-1]).any():
        raise UWMInputError(f"RLE {shown!r} has unsorted or overlapping runs")
    return starts, lengths


def rle_decode(rle: str, shape: tuple[int, int]) -> np.ndarray:
    """Decode competition RLE into a ``uint8`` mask of ``shape = (H, W)`` (1 = foreground).

    Raises:
        UWMInputError (a ``ValueError``): for any malformed string, see :func:`parse_rle`.
    """
    height, width = (int(side) for side in shape)
    starts, lengths = parse_rle(rle, height * width)
    flat = np.zeros(height * width, dtype=np.uint8)
    if starts.size:
        # Index of every foreground pixel at once: run k covers starts[k] + 0 .. lengths[k] - 1.
        # The work is proportional to the foreground, not to H * W (a cumsum over the image is
        # slower than the community's Python loop over runs).
        offsets = np.repeat(starts - (np.cumsum(lengths) - lengths), lengths)
        flat[np.arange(offsets.size) + offsets] = 1
    return flat.reshape(height, width)
