"""The model input of a slice: 2.5D channels of the right case-day, clamped ends, 16-bit range."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from uwm_d2.core.errors import UWMInputError
from uwm_d2.core.io import write_scan
from uwm_d2.data.inputs import (
    INPUT_SCALE,
    attach_neighbor_files,
    build_model_input,
    build_slice_input,
    group_by_case_day,
    neighbor_files,
)

HEIGHT, WIDTH = 31, 36  # non-square, like a 360x310 scan (array (310, 360))


def _case_day(folder: Path, values: list[int]) -> list[Path]:
    """One scan per value, each constant ``value``; sorted by slice number."""
    folder.mkdir(parents=True)
    paths = []
    for number, value in enumerate(values, start=1):
        path = folder / f"slice_{number:04d}_{WIDTH}_{HEIGHT}_1.50_1.50.png"
        write_scan(path, np.full((HEIGHT, WIDTH), value, dtype=np.uint16))
        paths.append(path)
    return paths


def _expected(channel_values: list[int]) -> np.ndarray:
    """The window of a stack of constant channels spans min..max of their values."""
    values = np.asarray(channel_values, dtype=np.float64)
    lo, hi = values.min(), values.max()
    return (values - lo) / (hi - lo) * INPUT_SCALE


def test_channels_follow_offsets(tmp_path: Path) -> None:
    values = [1000 * (i + 1) for i in range(8)]  # slice i has value 1000 (i + 1)
    paths = _case_day(tmp_path / "a", values)
    image = build_slice_input(paths, 4, (-2, 0, 2))
    assert image.shape == (HEIGHT, WIDTH, 3) and image.dtype == np.float32
    expected = _expected([values[2], values[4], values[6]])
    np.testing.assert_allclose(image[0, 0], expected, rtol=1e-5)
    assert np.ptp(image.reshape(-1, 3), axis=0).max() == 0  # constant channels stay constant


@pytest.mark.parametrize(
    ("index", "sources"),
    [(0, [0, 0, 2]), (1, [0, 1, 3]), (6, [4, 6, 7]), (7, [5, 7, 7])],
)
def test_ends_are_clamped(tmp_path: Path, index: int, sources: list[int]) -> None:
    values = [1000 * (i + 1) for i in range(8)]
    paths = _case_day(tmp_path / "a", values)
    assert neighbor_files(paths, index, (-2, 0, 2)) == [str(paths[i]) for i in sources]
    image = build_slice_input(paths, index, (-2, 0, 2))
    np.testing.assert_allclose(image[0, 0], _expected([values[i] for i in sources]), rtol=1e-5)


def test_build_model_input_equals_build_slice_input(tmp_path: Path) -> None:
    paths = _case_day(tmp_path / "a", [500, 9000, 20000, 40000, 41000])
    offsets = (-1, 0, 1, 2)
    for index in range(len(paths)):
        np.testing.assert_array_equal(
            build_model_input(neighbor_files(paths, index, offsets)),
            build_slice_input(paths, index, offsets),
        )


def test_sixteen_bit_range_is_kept(tmp_path: Path) -> None:
    """Values far above 255 stay distinct (dividing by 255 and clipping would saturate them)."""
    image = np.full((HEIGHT, WIDTH), 300, dtype=np.uint16)
    image[:, 10:20] = 12000
    image[:, 20:] = 30000
    path = tmp_path / f"slice_0001_{WIDTH}_{HEIGHT}_1.50_1.50.png"
    write_scan(path, image)
    model_input = build_model_input([path, path, path])
    low, mid, high = model_input[0, 0, 0], model_input[0, 15, 0], model_input[0, 30, 0]
    assert low == 0.0 and high == pytest.approx(INPUT_SCALE)
    assert 0.0 < mid < INPUT_SCALE
    np.testing.assert_allclose(mid, (12000 - 300) / (30000 - 300) * INPUT_SCALE, rtol=1e-5)
    naive = np.clip(image / 255.0, 0, 1)  # the wrong way: every pixel above 255 saturates
    assert naive[0, 0] == naive[0, 15] == naive[0, 30]


def test_grouping_keeps_case_days_apart() -> None:
    records = [
        {"case_day": "case2_day1", "slice": 3, "file_name": "b3"},
        {"case_day": "case1_day0", "slice": 2, "file_name": "a2"},
        {"case_day": "case2_day1", "slice": 1, "file_name": "b1"},
        {"case_day": "case1_day0", "slice": 1, "file_name": "a1"},
        {"case_day": "case2_day1", "slice": 2, "file_name": "b2"},
    ]
    groups = group_by_case_day(records)
    assert list(groups) == ["case1_day0", "case2_day1"]
    assert [r["file_name"] for r in groups["case2_day1"]] == ["b1", "b2", "b3"]
    attach_neighbor_files(records, (-2, 0, 2))
    by_name = {r["file_name"]: r["neighbor_files"] for r in records}
    assert by_name["a1"] == ["a1", "a1", "a2"]  # never b*: neighbours stay in the case-day
    assert by_name["b2"] == ["b1", "b2", "b3"]
    assert by_name["b3"] == ["b1", "b3", "b3"]


def test_grouping_rejects_duplicate_slices() -> None:
    records = [{"case_day": "case1_day0", "slice": 4}, {"case_day": "case1_day0", "slice": 4}]
    with pytest.raises(UWMInputError, match="case1_day0 lists slice 4 more than once"):
        group_by_case_day(records)


def test_channel_shape_mismatch_names_the_file(tmp_path: Path) -> None:
    paths = _case_day(tmp_path / "a", [100, 200])
    odd = tmp_path / "a" / "slice_0003_20_10_1.50_1.50.png"
    write_scan(odd, np.zeros((10, 20), dtype=np.uint16))
    with pytest.raises(UWMInputError, match="slice_0003"):
        build_model_input([paths[0], odd])
