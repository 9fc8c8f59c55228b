"""Tests of scan reading, intensity normalization and 2.5D stacking (uwm_d2.core.io)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from uwm_d2.core.errors import UWMInputError
from uwm_d2.core.io import (
    DEFAULT_SLICE_OFFSETS,
    intensity_window,
    neighbor_indices,
    normalize_intensity,
    read_scan,
    stack_25d,
    write_scan,
)

NAME_360x310 = "slice_0087_360_310_1.50_1.50.png"  # 360 wide, 310 high


def _ramp(shape: tuple[int, int]) -> np.ndarray:
    """A 16-bit image whose values run far above 255, all distinct modulo 256 where possible."""
    return (np.arange(shape[0] * shape[1], dtype=np.int64).reshape(shape) * 7 % 60000).astype(
        np.uint16
    )


def _write(path: Path, image: np.ndarray) -> Path:
    assert cv2.imwrite(str(path), image)
    return path


def test_16_bit_values_above_255_survive(tmp_path: Path) -> None:
    image = _ramp((310, 360))
    image[0, 0], image[0, 1] = 65535, 256
    path = tmp_path / NAME_360x310
    write_scan(path, image)
    read = read_scan(path)
    assert read.dtype == np.uint16
    assert read.shape == (310, 360)
    np.testing.assert_array_equal(read, image)
    assert read.max() == 65535


def test_write_scan_rejects_wrong_dtype_and_leaves_no_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="uint16"):
        write_scan(tmp_path / "x.png", np.zeros((4, 4), dtype=np.uint8))
    with pytest.raises(ValueError, match="2D"):
        write_scan(tmp_path / "x.png", np.zeros((4, 4, 3), dtype=np.uint16))
    assert list(tmp_path.iterdir()) == []


def test_name_that_does_not_parse_skips_the_shape_check(tmp_path: Path) -> None:
    path = _write(tmp_path / "anything.png", _ramp((5, 7)))
    assert read_scan(path).shape == (5, 7)
    with pytest.raises(UWMInputError, match=r"anything\.png"):
        read_scan(path, expected_shape=(7, 5))


def test_size_mismatch_with_file_name_names_the_file(tmp_path: Path) -> None:
    # Width and height swapped: the classic bug this check exists for.
    path = _write(tmp_path / NAME_360x310, _ramp((360, 310)))
    with pytest.raises(UWMInputError) as caught:
        read_scan(path)
    message = str(caught.value)
    assert str(path) in message
    assert "310x360" in message and "360x310" in message


def test_explicit_expected_shape_wins_over_the_name(tmp_path: Path) -> None:
    path = _write(tmp_path / NAME_360x310, _ramp((310, 360)))
    with pytest.raises(UWMInputError, match=NAME_360x310):
        read_scan(path, expected_shape=(360, 310))
    assert read_scan(path, expected_shape=(310, 360)).shape == (310, 360)


def test_8_bit_png_is_rejected(tmp_path: Path) -> None:
    path = _write(tmp_path / "slice_0001_8_6_1.50_1.50.png", np.full((6, 8), 200, np.uint8))
    with pytest.raises(UWMInputError) as caught:
        read_scan(path)
    assert str(path) in str(caught.value)
    assert "is 8-bit, expected 16-bit grayscale" in str(caught.value)


def test_rgb_png_is_rejected(tmp_path: Path) -> None:
    path = _write(tmp_path / "slice_0001_8_6_1.50_1.50.png", np.zeros((6, 8, 3), np.uint16))
    with pytest.raises(UWMInputError) as caught:
        read_scan(path)
    assert str(path) in str(caught.value)
    assert "3 channels" in str(caught.value)


def test_missing_file_and_folder(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / NAME_360x310
    with pytest.raises(UWMInputError) as caught:
        read_scan(missing)
    assert str(missing) in str(caught.value)
    assert "does not exist" in str(caught.value)
    with pytest.raises(UWMInputError, match="is a folder"):
        read_scan(tmp_path)


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda data: data[: len(data) // 2], "truncated"),
        (lambda data: data[:-5], "truncated"),  # only the end of IEND missing
        (lambda data: b"not a png at all", "not a PNG"),
        (lambda data: b"", "not a PNG"),
        (lambda data: data[:100] + bytes(200) + data[300:], "corrupt"),  # bit rot inside IDAT
    ],
)
def test_corrupt_or_truncated_png_is_rejected_quietly(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], damage, reason: str
) -> None:
    good = tmp_path / "good.png"
    write_scan(good, _ramp((266, 266)))
    bad = tmp_path / NAME_360x310
    bad.write_bytes(damage(good.read_bytes()))
    with pytest.raises(UWMInputError) as caught:
        read_scan(bad)
    assert str(bad) in str(caught.value)
    assert reason in str(caught.value)
    assert "\n" not in str(caught.value)
    # No "libpng error: ..." lines leak to the process's stderr.
    assert capfd.readouterr().err == ""


def test_normalize_maps_percentile_window_to_unit_range() -> None:
    image = np.arange(10_000, dtype=np.uint16).reshape(100, 100) * 3  # values up to 29997
    out = normalize_intensity(image, 1.0, 99.0)
    assert out.dtype == np.float32
    assert out.shape == image.shape
    assert out.min() == 0.0 and out.max() == 1.0
    lo, hi = np.percentile(image, (1.0, 99.0))
    assert (lo, hi) == intensity_window(image, 1.0, 99.0)
    inside = (image > lo) & (image < hi)
    np.testing.assert_allclose(out[inside], (image[inside] - lo) / (hi - lo), atol=1e-6)
    # Not a division by 255: a value of 255 is near black in a 16-bit window.
    assert out.flat[85] < 0.01


def test_normalize_ignores_a_few_bright_outliers() -> None:
    image = np.full((100, 100), 1000, dtype=np.uint16)
    image[:, 50:] = 2000
    image[0, :3] = 65535  # 0.03% of the pixels
    out = normalize_intensity(image)
    assert out[50, 0] == 0.0
    assert out[50, 99] == 1.0  # 2000 is the top of the window, not 65535


def test_normalize_constant_image_is_all_zeros() -> None:
    out = normalize_intensity(np.full((8, 9), 1234, dtype=np.uint16))
    assert out.dtype == np.float32
    assert not out.any()


def test_normalize_uses_one_window_for_a_whole_stack() -> None:
    dark = np.full((10, 10), 100, dtype=np.uint16)
    bright = np.full((10, 10), 300, dtype=np.uint16)
    stack = np.stack([dark, (dark + bright) // 2, bright], axis=-1)
    out = normalize_intensity(stack, 0.0, 100.0)
    # Per-channel windows would make every constant channel 0; one window keeps their order.
    assert out[..., 0].max() == 0.0
    assert np.allclose(out[..., 1], 0.5)
    assert out[..., 2].min() == 1.0


def test_normalize_rejects_bad_percentiles() -> None:
    for dtype in (np.float64, np.uint16):  # the arithmetic and the lookup-table paths
        with pytest.raises(ValueError):
            normalize_intensity(np.zeros((2, 2), dtype), 50.0, 50.0)
        with pytest.raises(ValueError):
            normalize_intensity(np.zeros((2, 2), dtype), -1.0, 99.0)


def test_neighbor_indices_clamp_at_both_ends() -> None:
    assert DEFAULT_SLICE_OFFSETS == (-2, 0, 2)
    assert neighbor_indices(0, 10) == [0, 0, 2]
    assert neighbor_indices(1, 10) == [0, 1, 3]
    assert neighbor_indices(5, 10) == [3, 5, 7]
    assert neighbor_indices(8, 10) == [6, 8, 9]
    assert neighbor_indices(9, 10) == [7, 9, 9]
    assert neighbor_indices(0, 1, (-2, -1, 0, 1, 2)) == [0, 0, 0, 0, 0]
    assert neighbor_indices(3, 144, (-1, 0, 1)) == [2, 3, 4]


def test_neighbor_indices_reject_bad_arguments() -> None:
    with pytest.raises(ValueError):
        neighbor_indices(10, 10)
    with pytest.raises(ValueError):
        neighbor_indices(-1, 10)
    with pytest.raises(ValueError):
        neighbor_indices(0, 0)


def _constant_slices(folder: Path, count: int, shape: tuple[int, int] = (6, 8)) -> list[Path]:
    """Slices 1..count, slice k filled with the value 1000 * k (so channels are identifiable)."""
    paths = []
    for number in range(1, count + 1):
        path = folder / f"slice_{number:04d}_{shape[1]}_{shape[0]}_1.50_1.50.png"
        write_scan(path, np.full(shape, 1000 * number, dtype=np.uint16))
        paths.append(path)
    return paths


def test_stack_25d_channels_come_from_the_right_slices(tmp_path: Path) -> None:
    paths = _constant_slices(tmp_path, 6)
    middle = stack_25d(paths, 3)  # slice 4, neighbours slices 2 and 6
    assert middle.shape == (6, 8, 3)
    assert middle.dtype == np.uint16
    assert [int(middle[0, 0, c]) for c in range(3)] == [2000, 4000, 6000]
    first = stack_25d(paths, 0)
    assert [int(first[0, 0, c]) for c in range(3)] == [1000, 1000, 3000]
    last = stack_25d(paths, 5)
    assert [int(last[0, 0, c]) for c in range(3)] == [4000, 6000, 6000]
    five = stack_25d(paths, 2, offsets=(-2, -1, 0, 1, 2))
    assert [int(five[0, 0, c]) for c in range(5)] == [1000, 2000, 3000, 4000, 5000]


def test_stack_25d_reads_each_distinct_file_once(tmp_path: Path) -> None:
    paths = _constant_slices(tmp_path, 3)
    calls: list[Path] = []

    def counting_reader(path: Path) -> np.ndarray:
        calls.append(path)
        return read_scan(path)

    stack = stack_25d(paths, 0, reader=counting_reader)
    assert [int(stack[0, 0, c]) for c in range(3)] == [1000, 1000, 3000]
    assert sorted(calls) == [paths[0], paths[2]]


def test_stack_25d_shape_mismatch_names_the_file(tmp_path: Path) -> None:
    paths = _constant_slices(tmp_path, 3)
    odd = tmp_path / "slice_0004_9_6_1.50_1.50.png"
    write_scan(odd, np.zeros((6, 9), dtype=np.uint16))
    with pytest.raises(UWMInputError) as caught:
        stack_25d([*paths, odd], 2)
    assert str(odd) in str(caught.value)


def test_stack_25d_propagates_a_bad_file(tmp_path: Path) -> None:
    paths = _constant_slices(tmp_path, 3)
    paths[2].write_bytes(b"garbage")
    with pytest.raises(UWMInputError, match=paths[2].name):
        stack_25d(paths, 1)


@pytest.mark.parametrize("dtype, top", [(np.uint16, 65535), (np.uint16, 40), (np.uint8, 255)])
@pytest.mark.parametrize("window", [(0.5, 99.5), (0.0, 100.0), (13.7, 50.0), (0.0, 0.001)])
def test_integer_window_equals_numpy_percentile(dtype, top, window):
    """The histogram path for 8/16-bit scans gives np.percentile's values exactly."""
    from uwm_d2.core.io import intensity_window

    rng = np.random.default_rng(int(top) + int(window[1] * 10))
    for shape in [(1,), (2,), (7, 9), (31, 17, 3)]:
        image = rng.integers(0, top, shape, dtype=dtype, endpoint=True)
        expected = np.percentile(image, window)
        np.testing.assert_allclose(intensity_window(image, *window), expected, rtol=0, atol=1e-9)


@pytest.mark.parametrize("dtype, top", [(np.uint16, 60000), (np.uint16, 300), (np.uint8, 255)])
@pytest.mark.parametrize("scale", [1.0, 255.0])
def test_integer_lookup_path_equals_the_arithmetic(dtype, top, scale):
    """8/16-bit images go through a lookup table: bit for bit the float32 arithmetic, then scale."""
    rng = np.random.default_rng(top)
    image = rng.integers(0, top, (31, 36, 3), dtype=dtype, endpoint=True)
    lo, hi = intensity_window(image, 0.5, 99.5)
    expected = (image.astype(np.float32) - np.float32(lo)) * np.float32(1.0 / (hi - lo))
    expected = np.clip(expected, 0.0, 1.0) * np.float32(scale)
    out = normalize_intensity(image, scale=scale)
    assert out.dtype == np.float32 and out.shape == image.shape
    np.testing.assert_array_equal(out, expected)
    as_float = normalize_intensity(image.astype(np.float64), scale=scale)  # the arithmetic path
    np.testing.assert_allclose(out, as_float, rtol=0, atol=1e-4 * scale)


@pytest.mark.parametrize("offsets", [(0,), (-2, 0, 2), (-2, -1, 0, 1, 2)])
def test_stack_25d_equals_numpy_stacking(tmp_path: Path, offsets) -> None:
    paths = _constant_slices(tmp_path, 5)
    stack = stack_25d(paths, 2, offsets)
    expected = np.stack([read_scan(paths[i]) for i in neighbor_indices(2, 5, offsets)], axis=-1)
    assert stack.dtype == np.uint16 and stack.shape == (6, 8, len(offsets))
    np.testing.assert_array_equal(stack, expected)
