"""Reading 16-bit scans, intensity normalization and 2.5D slice stacking.

Scans are 16-bit grayscale PNGs whose values run far above 255, so they are read with
``cv2.IMREAD_UNCHANGED`` and checked to be exactly ``(H, W) uint16``; anything else (8-bit, RGB,
corrupt, truncated, wrong size) raises :class:`~uwm_d2.core.errors.UWMInputError` naming the file,
because a silently mis-read scan trains a model on garbage.

Intensity normalization (:func:`normalize_intensity`) is a robust percentile window: the values at
the ``low_percentile`` and ``high_percentile`` percentiles of the *whole* array become 0 and 1,
values outside are clipped. MRI intensities have no absolute scale (they vary by scanner, coil and
session), so a fixed divisor such as 255 or 65535 is wrong; percentiles ignore the few very bright
outlier pixels that a min-max window would let set the scale. A 2.5D stack ``(H, W, C)`` gets one
window for all its channels, so the relative brightness of neighbouring slices survives.

2.5D input (:func:`stack_25d`) puts neighbouring slices of the same case-day into the channels; the
neighbours are chosen by :func:`neighbor_indices`, clamped at the first and last slice.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np

from uwm_d2.core.atomic import atomic_path
from uwm_d2.core.errors import UWMInputError
from uwm_d2.core.ids import parse_scan_name

#: Neighbour offsets of the 2.5D input: the slice two below, the slice itself, two above
#: (stride 2, as in the strongest public 2.5D solutions; 3 channels fit ImageNet-style stems).
DEFAULT_SLICE_OFFSETS: tuple[int, ...] = (-2, 0, 2)

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _check_png_structure(data: bytes, shown: str) -> None:
    """Walk the PNG chunks and raise ``UWMInputError`` on a truncated or corrupt file.

    OpenCV would notice these too, but libpng then prints ``libpng error: ...`` straight to the
    process's stderr (``cv2.utils.logging.setLogLevel`` does not silence libpng), which floods the
    logs of a data loader. Checking the chunk lengths, the CRCs of the critical chunks and the final
    ``IEND`` first catches truncation and bit rot quietly; it costs one CRC pass over a ~30 KB file.
    """
    if not data.startswith(_PNG_SIGNATURE):
        raise UWMInputError(f"scan {shown} is not a PNG file (bad signature)")
    position = len(_PNG_SIGNATURE)
    while True:
        if position + 12 > len(data):
            raise UWMInputError(f"scan {shown} is truncated (PNG ends before its IEND chunk)")
        (length,) = struct.unpack_from(">I", data, position)
        chunk_type = data[position + 4 : position + 8]
        end = position + 12 + length
        if end > len(data):
            raise UWMInputError(f"scan {shown} is truncated (PNG chunk {chunk_type!r} cut short)")
        # Critical chunks (upper-case first letter) must be intact; libpng only warns about the
        # ancillary ones, so they are not checked either.
        if chunk_type[:1].isupper():
            (crc,) = struct.unpack_from(">I", data, end - 4)
            if zlib.crc32(data[position + 4 : end - 4]) != crc:
                raise UWMInputError(f"scan {shown} is corrupt (CRC error in chunk {chunk_type!r})")
        if chunk_type == b"IEND":
            return
        position = end


def _expected_shape_from_name(path: Path) -> tuple[int, int] | None:
    """The ``(H, W)`` that the file name promises, or ``None`` when the name is not a scan name."""
    try:
        return parse_scan_name(path.name).shape
    except UWMInputError:
        return None


def read_scan(path: str | Path, expected_shape: tuple[int, int] | None = None) -> np.ndarray:
    """Read one scan as an ``(H, W)`` ``uint16`` array, validated.

    Args:
        path: a 16-bit grayscale PNG.
        expected_shape: ``(H, W)`` the image must have. ``None`` takes it from the file name
            (``slice_ZZZZ_W_H_PX_PY.png``, width first) when the name parses, else skips the check.

    Raises:
        UWMInputError: the file is missing or unreadable, not a PNG, truncated or corrupt, not
            single-channel, not 16-bit, or its shape differs from ``expected_shape``. The message is
            one line and names the file.
    """
    path = Path(path)
    shown = repr(str(path))
    if not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise UWMInputError(f"scan {shown} {what}")
    try:
        data = path.read_bytes()
    except OSError as error:
        raise UWMInputError(f"scan {shown} cannot be read ({error.strerror or error})") from error
    _check_png_structure(data, shown)
    # Same decoder and flags as cv2.imread(path, IMREAD_UNCHANGED), but on bytes that are already
    # in memory and already checked, so the file is read once.
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise UWMInputError(f"scan {shown} could not be decoded as a PNG image")
    if image.ndim != 2:
        raise UWMInputError(
            f"scan {shown} has {image.shape[2]} channels, expected single-channel 16-bit grayscale"
        )
    if image.dtype != np.uint16:
        bits = image.dtype.itemsize * 8
        raise UWMInputError(f"scan {shown} is {bits}-bit, expected 16-bit grayscale")
    if expected_shape is None:
        expected_shape = _expected_shape_from_name(path)
    if expected_shape is not None and image.shape != tuple(expected_shape):
        height, width = image.shape
        raise UWMInputError(
            f"scan {shown} is {width}x{height} (W x H) but {expected_shape[1]}x{expected_shape[0]}"
            " was expected (from its file name or the caller)"
        )
    return image


def write_scan(path: str | Path, image: np.ndarray) -> None:
    """Write an ``(H, W)`` ``uint16`` array as a 16-bit grayscale PNG, atomically.

    Raises:
        ValueError: ``image`` is not a 2D ``uint16`` array (a programming error, not user input).
        UWMInputError: the target folder does not exist or is not writable.
    """
    image = np.asarray(image)
    if image.ndim != 2 or image.dtype != np.uint16:
        raise ValueError(f"write_scan expects a 2D uint16 array, got {image.dtype} {image.shape}")
    # Encode in memory: cv2.imwrite picks the format from the extension, which the atomic temp
    # file does not have.
    ok, encoded = cv2.imencode(".png", image)
    if not ok:
        raise ValueError(f"OpenCV could not encode a {image.shape} uint16 image as PNG")
    with atomic_path(path) as tmp_path:
        tmp_path.write_bytes(encoded.tobytes())


def intensity_window(
    image: np.ndarray, low_percentile: float = 0.5, high_percentile: float = 99.5
) -> tuple[float, float]:
    """The ``(lo, hi)`` intensity window of :func:`normalize_intensity`, over the whole array."""
    _check_percentiles(low_percentile, high_percentile)
    image = np.asarray(image)
    if image.dtype in (np.uint8, np.uint16) and image.size:
        return _integer_percentiles(_histogram(image), image.size, low_percentile, high_percentile)
    lo, hi = np.percentile(image, (low_percentile, high_percentile))
    return float(lo), float(hi)


def _check_percentiles(low_percentile: float, high_percentile: float) -> None:
    if not 0.0 <= low_percentile < high_percentile <= 100.0:
        raise ValueError(
            f"need 0 <= low_percentile < high_percentile <= 100, got "
            f"{low_percentile}, {high_percentile}"
        )


def _histogram(image: np.ndarray) -> np.ndarray:
    """Counts of each value ``0..image.max()`` of an 8/16-bit array (``int64``).

    ``cv2.calcHist`` with one bin per integer is exact (bin = value * 1.0) and about 2.5x faster
    than ``np.bincount`` on a 2.5D stack; its ``float32`` counts are exact below 2**24 pixels.
    """
    flat = image.reshape(-1, 1)
    if image.size >= 1 << 24:
        return np.bincount(flat.ravel())
    bins = int(image.max()) + 1
    counts = cv2.calcHist([flat], [0], None, [bins], [0, bins])
    return counts.ravel().astype(np.int64)


def _integer_percentiles(
    histogram: np.ndarray, size: int, *percentiles: float
) -> tuple[float, ...]:
    """``np.percentile`` (linear interpolation) of 8/16-bit data from its histogram.

    Same values as ``np.percentile``, several times faster on a scan (no sort): the k-th
    smallest value is the first histogram bin whose cumulative count exceeds k.
    """
    cumulative = np.cumsum(histogram)
    values = []
    for percentile in percentiles:
        position = percentile / 100.0 * (size - 1)
        below = int(np.floor(position))
        above = min(below + 1, size - 1)
        low_value, high_value = np.searchsorted(cumulative, (below, above), side="right")
        values.append(float(low_value + (position - below) * (int(high_value) - int(low_value))))
    return tuple(values)


def normalize_intensity(
    image: np.ndarray,
    low_percentile: float = 0.5,
    high_percentile: float = 99.5,
    scale: float = 1.0,
) -> np.ndarray:
    """Map raw scan intensities to ``float32`` in ``[0, 1]`` with a robust percentile window.

    ``lo`` and ``hi`` are the ``low_percentile`` and ``high_percentile`` percentiles of *all* values
    of ``image`` (for a 2.5D ``(H, W, C)`` stack: one window for every channel, so neighbouring
    slices keep their relative brightness). The result is ``clip((image - lo) / (hi - lo), 0, 1)``.
    A constant image (``hi <= lo``) carries no contrast and maps to all zeros. Never divide by 255:
    the scans are 16-bit.

    8/16-bit images go through a lookup table over ``0..max``: the same ``float32`` operations on
    each distinct value, so bit-identical results, in one gather pass instead of four passes.

    Args:
        image: any real array, typically ``(H, W)`` or ``(H, W, C)`` ``uint16``.
        scale: the clipped ``[0, 1]`` values are then multiplied by this (``float32``), e.g. 255
            for the model range; the same as multiplying the result, without another pass.

    Returns:
        ``float32`` array of the same shape, values in ``[0, scale]``.

    Raises:
        ValueError: the percentiles are not ``0 <= low < high <= 100``.
    """
    image = np.asarray(image)
    integer = image.dtype in (np.uint8, np.uint16) and image.size > 0
    if integer:
        _check_percentiles(low_percentile, high_percentile)
        histogram = _histogram(image)
        lo, hi = _integer_percentiles(histogram, image.size, low_percentile, high_percentile)
    else:
        lo, hi = intensity_window(image, low_percentile, high_percentile)
    if not hi > lo:
        return np.zeros(image.shape, dtype=np.float32)
    values = np.arange(len(histogram), dtype=np.float32) if integer else image.astype(np.float32)
    scaled = (values - np.float32(lo)) * np.float32(1.0 / (hi - lo))
    np.clip(scaled, 0.0, 1.0, out=scaled)
    if scale != 1.0:
        scaled *= np.float32(scale)
    return np.take(scaled, image) if integer else scaled


def neighbor_indices(
    index: int, count: int, offsets: Sequence[int] = DEFAULT_SLICE_OFFSETS
) -> list[int]:
    """Positions ``index + offset`` for each offset, clamped into ``[0, count - 1]``.

    Clamping repeats the edge slice at the first and last slices of a scan, rather than padding
    with zeros, so the model never sees a black channel that real neighbours would not produce.

    Raises:
        ValueError: ``count < 1`` or ``index`` outside ``[0, count - 1]``.
    """
    if count < 1:
        raise ValueError(f"neighbor_indices needs count >= 1, got {count}")
    if not 0 <= index < count:
        raise ValueError(f"slice index {index} is outside [0, {count - 1}]")
    return [min(max(index + int(offset), 0), count - 1) for offset in offsets]


def stack_25d(
    slice_paths: Sequence[str | Path],
    index: int,
    offsets: Sequence[int] = DEFAULT_SLICE_OFFSETS,
    reader: Callable[[Path], np.ndarray] = read_scan,
) -> np.ndarray:
    """Stack slice ``index`` and its neighbours into an ``(H, W, C)`` ``uint16`` array.

    Args:
        slice_paths: the scans of ONE case-day, sorted by slice number (the caller guarantees
            both; offsets count positions in this list).
        index: position of the centre slice in ``slice_paths``.
        offsets: one channel per offset, in this order; see :func:`neighbor_indices`.
        reader: reads one path into an ``(H, W)`` array (tests and caches may substitute one).

    Raises:
        UWMInputError: a scan fails :func:`read_scan`, or a channel's shape differs from the centre
            slice's (the message names that file).
        ValueError: ``index`` is outside the list.
    """
    positions = neighbor_indices(index, len(slice_paths), offsets)
    # Clamping repeats edge slices; read each distinct file once.
    images = {
        position: reader(Path(slice_paths[position])) for position in dict.fromkeys(positions)
    }
    centre_shape = images[index].shape if index in images else images[positions[0]].shape
    for position, image in images.items():
        if image.shape != centre_shape:
            raise UWMInputError(
                f"scan {str(slice_paths[position])!r} has shape {image.shape}, but the 2.5D stack "
                f"around {str(slice_paths[index])!r} needs {centre_shape}"
            )
    channels = [images[position] for position in positions]
    if channels[0].dtype in (np.uint8, np.uint16, np.float32) and len(channels) <= 512:
        # cv2.merge interleaves ~9x faster than np.stack(axis=-1); same array.
        stack = cv2.merge(channels)
        return stack[..., None] if stack.ndim == 2 else stack
    return np.stack(channels, axis=-1)
