"""The model input of one slice: the only place that turns 16-bit scans into what the network sees.

Training (:class:`~uwm_d2.data.mapper.UWMDatasetMapper`) and inference both call
:func:`build_model_input` / :func:`build_slice_input`, so the two can never disagree on the
channels, the window or the range. No torch here: this is numpy over :mod:`uwm_d2.core.io`.

The input is an ``(H, W, C)`` ``float32`` array, one channel per slice offset
(``UWM.SLICE_OFFSETS``, default ``(-2, 0, 2)``) in that order, neighbours taken from the **same
case-day** and clamped at its first and last slice. Its values are
:func:`~uwm_d2.core.io.normalize_intensity` of the whole stack (one percentile window for all
channels) times :data:`INPUT_SCALE` = 255, i.e. in ``[0, 255]``: the range detectron2's
``MODEL.PIXEL_MEAN`` / ``PIXEL_STD`` conventions (and the COCO model-zoo weights) assume for
8-bit photos, but kept in float so none of the 16-bit precision is lost to rounding. The configs
set ``PIXEL_MEAN`` / ``PIXEL_STD`` for this range.

At test time the input is then resized by :func:`resize_to_test_size` (the shortest edge to
``INPUT.MIN_SIZE_TEST``, the longest at most ``INPUT.MAX_SIZE_TEST``, bilinear with OpenCV): the
test mapper and the exported-model predictor (:mod:`uwm_d2.deploy`) both call it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from uwm_d2.core.errors import UWMInputError
from uwm_d2.core.io import (
    DEFAULT_SLICE_OFFSETS,
    neighbor_indices,
    normalize_intensity,
    read_scan,
    stack_25d,
)

#: The normalized ``[0, 1]`` window is multiplied by this: the model sees values in ``[0, 255]``.
INPUT_SCALE: float = 255.0

Reader = Callable[[Path], np.ndarray]


def to_model_range(
    stack: np.ndarray, low_percentile: float = 0.5, high_percentile: float = 99.5
) -> np.ndarray:
    """Window a raw ``(H, W, C)`` stack (one window, all channels) to ``float32`` ``[0, 255]``."""
    # The scale rides along in normalize_intensity's lookup table: same values as multiplying
    # the [0, 1] result by 255, one pass fewer.
    return normalize_intensity(stack, low_percentile, high_percentile, scale=INPUT_SCALE)


def resized_shape(
    height: int, width: int, short_edge: int, max_size: float = float("inf")
) -> tuple[int, int]:
    """``(H', W')`` of an ``height x width`` image with its shortest edge scaled to ``short_edge``.

    The aspect ratio is kept; when the longest edge would pass ``max_size`` the image is scaled
    down until it does not; sizes are rounded half up. detectron2's ``ResizeShortestEdge`` rule
    (``tests/data/test_inputs.py`` checks it against ``get_output_shape``).
    """
    scale = short_edge / min(height, width)
    if height < width:
        new_height, new_width = float(short_edge), scale * width
    else:
        new_height, new_width = scale * height, float(short_edge)
    if max(new_height, new_width) > max_size:
        shrink = max_size / max(new_height, new_width)
        new_height, new_width = new_height * shrink, new_width * shrink
    return int(new_height + 0.5), int(new_width + 0.5)


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``(H, W)`` or ``(H, W, C)`` image → ``size = (H', W')``, bilinear (OpenCV), same layout."""
    new_height, new_width = size
    resized = cv2.resize(image, (new_width, new_height), interpolation=cv2.INTER_LINEAR)
    if image.ndim == 3 and resized.ndim == 2:  # OpenCV drops a trailing axis of size 1
        resized = resized[..., None]
    return resized


def resize_to_test_size(image: np.ndarray, min_size: int, max_size: float) -> np.ndarray:
    """The network input at test time: ``image`` resized by :func:`resized_shape`.

    ``min_size`` is ``INPUT.MIN_SIZE_TEST`` (0: no resize), ``max_size`` ``INPUT.MAX_SIZE_TEST``.
    """
    if min_size == 0:
        return image
    height, width = image.shape[:2]
    size = resized_shape(height, width, min_size, max_size)
    return image if size == (height, width) else resize_image(image, size)


def neighbor_files(
    slice_paths: Sequence[str | Path], index: int, offsets: Sequence[int] = DEFAULT_SLICE_OFFSETS
) -> list[str]:
    """The files of the channels of slice ``index``: ``slice_paths[index + offset]``, clamped.

    Args:
        slice_paths: the scans of ONE case-day, sorted by slice number.
        index: position of the centre slice in ``slice_paths``.
        offsets: one channel per offset, in this order.
    """
    return [str(slice_paths[i]) for i in neighbor_indices(index, len(slice_paths), offsets)]


def build_model_input(
    channel_files: Sequence[str | Path],
    low_percentile: float = 0.5,
    high_percentile: float = 99.5,
    reader: Reader = read_scan,
) -> np.ndarray:
    """The model input from the already chosen channel files (see :func:`neighbor_files`).

    Returns:
        ``(H, W, C)`` ``float32`` in ``[0, 255]``, channel ``c`` from ``channel_files[c]``.

    Raises:
        UWMInputError: a scan cannot be read or the channels differ in shape (names the file).
    """
    # The files are already the channels: stack the distinct ones as a "case-day" of slices (clamped
    # ends repeat a file; it is read once), then pick the channels in order.
    files = [str(path) for path in channel_files]
    distinct = list(dict.fromkeys(files))
    stack = stack_25d(distinct, 0, range(len(distinct)), reader=reader)
    if len(distinct) != len(files):
        stack = stack[..., [distinct.index(path) for path in files]]
    return to_model_range(stack, low_percentile, high_percentile)


def build_slice_input(
    slice_paths: Sequence[str | Path],
    index: int,
    offsets: Sequence[int] = DEFAULT_SLICE_OFFSETS,
    low_percentile: float = 0.5,
    high_percentile: float = 99.5,
    reader: Reader = read_scan,
) -> np.ndarray:
    """The model input of slice ``index`` of one case-day (``slice_paths`` sorted by slice).

    Equal to ``build_model_input(neighbor_files(slice_paths, index, offsets), ...)``.

    Returns:
        ``(H, W, len(offsets))`` ``float32`` in ``[0, 255]``.
    """
    stack = stack_25d(slice_paths, index, offsets, reader=reader)
    return to_model_range(stack, low_percentile, high_percentile)


def group_by_case_day(
    records: Iterable[Mapping[str, Any]],
    case_day_key: str = "case_day",
    slice_key: str = "slice",
) -> dict[str, list[Mapping[str, Any]]]:
    """Group slice records per case-day, each group sorted by slice number.

    Neighbours for the 2.5D channels must come from the same case-day and in slice order; this is
    the one grouping every caller uses. Works on COCO image records, detectron2 dataset dicts or
    rows of :func:`uwm_d2.core.layout_reader.index_scans` (as dicts).

    Returns:
        ``{case_day: [record, ...]}`` in sorted case-day order, each list sorted by ``slice_key``.

    Raises:
        UWMInputError: a record lacks one of the keys, or a case-day lists a slice number twice.
    """
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for record in records:
        try:
            groups.setdefault(str(record[case_day_key]), []).append(record)
        except KeyError as error:
            raise UWMInputError(f"slice record has no {case_day_key!r}: {dict(record)}") from error
    for case_day, group in groups.items():
        try:
            group.sort(key=lambda record: int(record[slice_key]))
        except KeyError as error:
            raise UWMInputError(f"a slice record of {case_day} has no {slice_key!r}") from error
        numbers = [int(record[slice_key]) for record in group]
        if len(set(numbers)) != len(numbers):
            duplicate = next(n for n in numbers if numbers.count(n) > 1)
            raise UWMInputError(f"{case_day} lists slice {duplicate} more than once")
    return dict(sorted(groups.items()))


def attach_neighbor_files(
    records: Iterable[dict[str, Any]],
    offsets: Sequence[int] = DEFAULT_SLICE_OFFSETS,
    file_key: str = "file_name",
) -> None:
    """Give every record a ``"neighbor_files"`` list: its channel files, from its own case-day.

    Each record needs ``case_day``, ``slice`` and ``file_key`` (an absolute or working-directory
    path). Storing the few channel paths per record (rather than the case-day's whole file list)
    keeps dataset dicts small when detectron2 pickles them for its workers.
    """
    for group in group_by_case_day(records).values():
        paths = [record[file_key] for record in group]
        for index, record in enumerate(group):
            record["neighbor_files"] = neighbor_files(paths, index, offsets)
