"""One slice's instance masks, packed: instance ``i`` is bit ``i % 8`` of plane ``i // 8``.

Why: a slice carries many instances (15-30 small-bowel loops on the phantom). Decoding ``N``
full-size masks, warping and resizing ``N`` channels, then scanning ``N`` full-size masks for
their boxes and per-class unions cost more than everything else the mapper does. Packed, the
geometric transforms run on ``ceil(N / 8)`` ``uint8`` planes, and boxes, emptiness and class
unions come from a few OR-reductions and 256-entry lookups of those planes.

Packing is exact under the transforms a mapper applies to segmentation maps: flips, crops,
padding with 0, the affine warp with ``INTER_NEAREST`` and the resize with
``INTER_NEAREST_EXACT`` copy pixel *values* without mixing them, the same property that makes them
correct on label maps (class ids up to 255), so every bit arrives where its pixel went.

COCO RLE (``{"size": [h, w], "counts": ...}``, column-major runs, compressed string or plain
list) is decoded straight into the planes: each run of ones adds its instance's bit at its start
and removes it at its end, and one running sum per plane (``cv2.integral`` of a single row, exact
modulo 256) paints every instance at once, about 4-8x faster than ``pycocotools`` decoding ``N``
byte masks and packing them. No torch here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import cv2
import numpy as np

#: ``_BIT_TABLES[k][v]`` is bit ``k`` of ``v`` (0 or 1): one ``cv2.LUT`` pass unpacks an instance.
_BIT_TABLES = [((np.arange(256) >> bit) & 1).astype(np.uint8) for bit in range(8)]


def num_planes(count: int) -> int:
    """Planes that hold ``count`` instances (8 per plane)."""
    return (count + 7) // 8


def _rle_counts(segmentations: Sequence[Mapping[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """Run lengths of every RLE, concatenated, and how many runs each has.

    Compressed strings are parsed vectorized over all instances at once (pycocotools'
    ``rleFrString``: 5-bit groups with a continuation bit, the last group's bit 4 a sign, and
    from the fourth count on each count is stored as the difference to the count two before).
    """
    strings, lists = [], {}
    for index, segmentation in enumerate(segmentations):
        counts = segmentation["counts"]
        if isinstance(counts, str):
            strings.append(counts.encode("ascii"))
        elif isinstance(counts, bytes):
            strings.append(counts)
        else:  # uncompressed RLE: the counts themselves
            lists[index] = np.asarray(counts, dtype=np.int64)
            strings.append(b"")
    lengths = np.fromiter((len(s) for s in strings), dtype=np.int64, count=len(strings))
    chars = np.frombuffer(b"".join(strings), dtype=np.uint8).astype(np.int64) - 48
    last = (chars & 0x20) == 0  # last character of a count
    if np.any((chars < 0) | (chars > 63)):
        raise ValueError("a compressed RLE string has a character outside '0'..'o'")
    if not last[np.cumsum(lengths)[lengths > 0] - 1].all():
        raise ValueError("a compressed RLE string ends in the middle of a count")
    ends = np.flatnonzero(last)
    starts = np.empty(len(ends), dtype=np.int64)
    if len(ends):
        starts[0] = 0
        starts[1:] = ends[:-1] + 1
    token_of_char = np.cumsum(last) - last
    group = np.arange(len(chars)) - starts[token_of_char] if len(chars) else chars
    values = (
        np.add.reduceat((chars & 0x1F) << (5 * group), starts)
        if len(starts)
        else np.zeros(0, np.int64)
    )
    negative = (chars[ends] & 0x10) != 0
    values[negative] -= np.int64(1) << (5 * (group[ends[negative]] + 1))
    # Counts per string; a count never spans two strings, so the tokens split cleanly.
    char_starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    first = np.searchsorted(ends, char_starts)  # first token at or after each string's start
    tokens = np.diff(np.append(first, len(values)))
    owner = np.repeat(np.arange(len(strings)), tokens)
    position = np.arange(len(values)) - first[owner]
    # Undo the delta coding: counts 1, 3, 5, ... and 2, 4, 6, ... are running sums per string.
    chained = position >= 1
    chain = owner * 2 + (position & 1)
    order = np.lexsort((position, chain))
    running = np.cumsum(np.where(chained, values, 0)[order])
    sorted_chain = chain[order]
    new_chain = np.ones(len(order), dtype=bool)
    new_chain[1:] = sorted_chain[1:] != sorted_chain[:-1]
    before = np.concatenate(([0], running[:-1]))[new_chain]
    decoded = np.empty_like(values)
    decoded[order] = running - before[np.cumsum(new_chain) - 1]
    decoded[~chained] = values[~chained]
    if lists:  # splice the uncompressed ones back in, in instance order
        pieces = np.split(decoded, np.cumsum(tokens)[:-1]) if len(tokens) else []
        for index, counts in lists.items():
            pieces[index] = counts
            tokens[index] = len(counts)
        decoded = np.concatenate(pieces) if pieces else decoded
    return decoded, tokens


def decode_packed(
    segmentations: Sequence[Mapping[str, Any]], height: int, width: int
) -> np.ndarray:
    """COCO RLE masks of one ``(height, width)`` image → ``(num_planes(N), H, W)`` ``uint8``.

    Bit ``i % 8`` of plane ``i // 8`` is instance ``i``'s mask; instances may overlap.

    Raises:
        ValueError: an RLE's ``size`` is not ``[height, width]`` or its runs do not cover exactly
            ``height * width`` pixels.
    """
    count = len(segmentations)
    pixels = height * width
    for segmentation in segmentations:
        if [int(s) for s in segmentation["size"]] != [height, width]:
            raise ValueError(
                f"an RLE mask has size {list(segmentation['size'])}, the image is "
                f"[{height}, {width}] (H, W)"
            )
    counts, runs = _rle_counts(segmentations)
    if np.any(counts < 0):
        raise ValueError("an RLE mask has a negative run length")
    owner = np.repeat(np.arange(count), runs)
    end = np.cumsum(counts)
    first_run = np.concatenate(([0], np.cumsum(runs)[:-1])).astype(np.int64)
    offset = np.concatenate(([0], end))[first_run]  # pixels before each instance's first run
    end -= offset[owner]
    totals = np.zeros(count, dtype=np.int64)
    np.add.at(totals, owner, counts)
    if np.any(totals != pixels):
        bad = int(np.flatnonzero(totals != pixels)[0])
        raise ValueError(
            f"an RLE mask covers {int(totals[bad])} pixels, the image has {pixels} "
            f"({height}x{width}, H x W)"
        )
    ones = (np.arange(len(counts)) - first_run[owner]) % 2 == 1  # runs alternate 0, 1, 0, ...
    ones &= counts > 0
    who, stop = owner[ones], end[ones]
    start = stop - counts[ones]
    plane, bits = who >> 3, (1 << (who & 7)).astype(np.uint8)
    # Run edges: +bit where a run starts, -bit (mod 256) one past its end; the running sum of
    # a plane is then, at every pixel, the sum (= OR: distinct bits) of the instances covering it.
    edges = np.zeros((num_planes(count), pixels + 1), dtype=np.uint8)
    np.add.at(edges, (plane, start), bits)
    np.add.at(edges, (plane, stop), (256 - bits.astype(np.int64)).astype(np.uint8))
    planes = np.empty((num_planes(count), height, width), dtype=np.uint8)
    for index in range(len(planes)):
        # cv2.integral of one row is its running sum (int32, far faster than np.cumsum on
        # uint8); its low byte is the plane. Pixels are column-major: transpose to (H, W).
        running = cv2.integral(edges[index : index + 1, :pixels])[1, 1:]
        cv2.transpose(running.astype(np.uint8).reshape(width, height), dst=planes[index])
    return planes


def pack(masks: np.ndarray) -> np.ndarray:
    """``(N, H, W)`` masks (bool or 0/1) → packed planes: the inverse of :func:`unpack`."""
    masks = np.asarray(masks)
    planes = np.zeros((num_planes(len(masks)), *masks.shape[1:]), dtype=np.uint8)
    for index, mask in enumerate(masks):
        planes[index >> 3] |= (mask != 0).astype(np.uint8) << (index & 7)
    return planes


def unpack(
    planes: np.ndarray,
    indices: Sequence[int],
    out: np.ndarray | None = None,
    boxes: np.ndarray | None = None,
) -> np.ndarray:
    """The masks of ``indices`` as ``(len(indices), H, W)`` ``uint8`` 0/1 (``out`` if given).

    ``out`` may be any C-contiguous ``(len(indices), H, W)`` 1-byte array (e.g. the ``uint8``
    view of a shared-memory bool tensor). With ``boxes`` (their :func:`bounding_boxes`, one row per
    index), only each box is looked up and the rest zero-filled: an instance covers a small part
    of the slice, so this writes each mask with a fast fill instead of a full lookup pass.
    """
    height, width = planes.shape[1:]
    if out is None:
        out = np.empty((len(indices), height, width), dtype=np.uint8)
    if boxes is not None:
        out[...] = 0
    for row, index in enumerate(indices):
        if boxes is None:
            source, target = planes[index >> 3], out[row]
        else:
            x0, y0, x1, y1 = (int(v) for v in boxes[row])
            source, target = planes[index >> 3, y0:y1, x0:x1], out[row, y0:y1, x0:x1]
        _lookup(source, _BIT_TABLES[index & 7], target)
    return out


def _lookup(source: np.ndarray, table: np.ndarray, target: np.ndarray) -> None:
    """``target[...] = table[source]`` with ``cv2.LUT`` (one pass, straight into ``target``)."""
    if source.size == 0:
        return
    result = cv2.LUT(source, table, dst=target)
    if result is not target and not np.shares_memory(result, target):
        target[...] = result  # an OpenCV build that did not write in place


def bounding_boxes(planes: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Tight ``XYXY`` boxes of the ``count`` packed instances, and which are non-empty.

    Same boxes as detectron2's ``BitMasks.get_bounding_boxes`` (``x1, y1`` one past the last
    column / row; all zeros for an empty mask), from the OR of each plane over rows and columns.

    Returns:
        ``(count, 4)`` ``float32`` boxes and a ``(count,)`` bool array, True where the mask has
        at least one pixel.
    """
    if count == 0:
        return np.zeros((0, 4), dtype=np.float32), np.zeros(0, dtype=bool)
    indices = np.arange(count)
    plane, bit = indices >> 3, (indices & 7)[:, None]
    rows = (np.bitwise_or.reduce(planes, axis=2)[plane] >> bit) & 1  # (count, H)
    cols = (np.bitwise_or.reduce(planes, axis=1)[plane] >> bit) & 1  # (count, W)
    nonempty = rows.any(axis=1)
    boxes = np.zeros((count, 4), dtype=np.float32)
    boxes[:, 0] = cols.argmax(axis=1)
    boxes[:, 1] = rows.argmax(axis=1)
    boxes[:, 2] = cols.shape[1] - cols[:, ::-1].argmax(axis=1)
    boxes[:, 3] = rows.shape[1] - rows[:, ::-1].argmax(axis=1)
    boxes[~nonempty] = 0.0
    return boxes, nonempty


def union(
    planes: np.ndarray,
    indices: Sequence[int],
    out: np.ndarray | None = None,
    boxes: np.ndarray | None = None,
) -> np.ndarray:
    """``(H, W)`` ``uint8``: 1 where any instance of ``indices`` is, else 0 (``out`` if given).

    With ``boxes`` (one row per index), only the box around them all is looked up.
    """
    height, width = planes.shape[1:]
    if out is None:
        out = np.empty((height, width), dtype=np.uint8)
    out[...] = 0
    selected: dict[int, int] = {}
    for index in indices:
        selected[index >> 3] = selected.get(index >> 3, 0) | (1 << (index & 7))
    if not selected:
        return out
    y0, y1, x0, x1 = 0, height, 0, width
    if boxes is not None and len(boxes):
        x0, y0 = (int(v) for v in boxes[:, :2].min(axis=0))
        x1, y1 = (int(v) for v in boxes[:, 2:].max(axis=0))
    target = out[y0:y1, x0:x1]
    scratch = np.empty_like(target)
    for number, (plane, bits) in enumerate(sorted(selected.items())):
        table = ((np.arange(256) & bits) != 0).astype(np.uint8)
        _lookup(planes[plane, y0:y1, x0:x1], table, target if number == 0 else scratch)
        if number:
            np.bitwise_or(target, scratch, out=target)
    return out
