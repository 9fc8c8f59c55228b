"""The scan index and the CSV readers: strict, with one-line errors that name the culprit."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from uwm_d2.core.errors import UWMInputError
from uwm_d2.core.layout_reader import (
    SCAN_COLUMNS,
    index_data_root,
    index_scans,
    read_label_csv,
    read_prediction_csv,
    require_columns,
)

NAME = "slice_{:04d}_360_310_1.50_1.50.png"


def _touch(root: Path, relative: str) -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")  # index_scans reads names only
    return path


def _scans_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    for case, day, slices in ((12, 3, (2, 1, 10)), (2, 5, (1,)), (2, 0, (1, 2))):
        for number in slices:
            _touch(root, f"train/case{case}/case{case}_day{day}/scans/{NAME.format(number)}")
    return root


def test_index_scans_parses_sorts_and_keeps_width_first(tmp_path: Path) -> None:
    root = _scans_root(tmp_path)
    _touch(root, "train/case2/case2_day0/scans/.DS_Store")  # hidden files are ignored
    scans = index_scans(root, "train")
    assert tuple(scans.columns) == SCAN_COLUMNS
    assert scans["id"].tolist() == [
        "case2_day0_slice_0001",
        "case2_day0_slice_0002",
        "case2_day5_slice_0001",
        "case12_day3_slice_0001",
        "case12_day3_slice_0002",
        "case12_day3_slice_0010",
    ]
    first = scans.iloc[0]
    assert first["path"] == "train/case2/case2_day0/scans/slice_0001_360_310_1.50_1.50.png"
    assert (first["width"], first["height"]) == (360, 310)
    assert (first["spacing_x"], first["spacing_y"]) == (1.5, 1.5)
    assert first["case_day"] == "case2_day0"
    assert scans["slice"].dtype == "int64"


def test_index_scans_of_an_empty_split_is_empty(tmp_path: Path) -> None:
    (tmp_path / "test").mkdir()
    scans = index_scans(tmp_path, "test")
    assert scans.empty and tuple(scans.columns) == SCAN_COLUMNS


@pytest.mark.parametrize(
    ("relative", "culprit"),
    [
        ("train/case12/case12_day3/scans/slice_0003_360_310.png", "slice_0003_360_310.png"),
        ("train/case12/case12_day3/scans/slice_3_360_310_1.50_1.50.png", "slice_3_360_310"),
        ("train/case12/case13_day3/scans/" + NAME.format(1), "case13_day3"),
        ("train/case12/day3/scans/" + NAME.format(1), "day3"),
        ("train/patient12/case12_day3/scans/" + NAME.format(1), "patient12"),
        ("train/case012/case012_day3/scans/" + NAME.format(1), "case012"),
        ("train/case12/case12_day3/scans/slice_0002_266_266_1.50_1.50.png", "slice_0002_266"),
        ("train/case12/case12_day3/scans/slice_0004_360_310_1.63_1.63.png", "slice_0004_360"),
    ],
)
def test_index_scans_rejects_bad_names(tmp_path: Path, relative: str, culprit: str) -> None:
    root = _scans_root(tmp_path)
    _touch(root, relative)
    with pytest.raises(UWMInputError, match=culprit) as error:
        index_scans(root, "train")
    assert "\n" not in str(error.value)


def test_index_scans_needs_a_scans_folder_and_the_split(tmp_path: Path) -> None:
    root = _scans_root(tmp_path)
    with pytest.raises(UWMInputError, match="does not exist"):
        index_scans(root, "test")
    shutil.rmtree(root / "train/case2/case2_day5/scans")
    with pytest.raises(UWMInputError, match="case2_day5"):
        index_scans(root, "train")


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


GOOD = (
    "id,class,segmentation\n"
    "case1_day0_slice_0001,large_bowel,1 2\n"
    "case1_day0_slice_0001,small_bowel,\n"
    "case1_day0_slice_0001,stomach,5 1\n"
)


def test_read_label_csv_keeps_text_and_turns_empty_cells_into_empty_strings(
    tmp_path: Path,
) -> None:
    labels = read_label_csv(_write(tmp_path / "t.csv", GOOD))
    assert labels.columns.tolist() == ["id", "class", "segmentation"]
    assert labels["segmentation"].tolist() == ["1 2", "", "5 1"]
    assert all(isinstance(value, str) for value in labels["segmentation"])


def test_read_label_csv_drops_extra_columns(tmp_path: Path) -> None:
    text = "id,class,segmentation,note\ncase1_day0_slice_0001,stomach,,x\n"
    labels = read_label_csv(_write(tmp_path / "t.csv", text))
    assert labels.columns.tolist() == ["id", "class", "segmentation"]


def test_header_only_is_an_empty_table(tmp_path: Path) -> None:
    labels = read_label_csv(_write(tmp_path / "t.csv", "id,class,segmentation\n"))
    assert labels.empty


@pytest.mark.parametrize(
    ("text", "culprit"),
    [
        ("", "is empty"),
        ("id,class\ncase1_day0_slice_0001,stomach\n", "'segmentation'"),
        ("id,klass,segmentation\ncase1_day0_slice_0001,stomach,\n", "'class'"),
        (GOOD.replace("case1_day0_slice_0001,stomach", "case1_dayX_slice_0001,stomach"), "dayX"),
        (GOOD.replace("stomach", "liver"), "case1_day0_slice_0001.*liver"),
        (GOOD + "case1_day0_slice_0001,stomach,\n", "case1_day0_slice_0001 stomach"),
        ('id,class,segmentation\n"case1,stomach\n', "cannot be parsed"),
    ],
)
def test_read_label_csv_errors_name_the_culprit(tmp_path: Path, text: str, culprit: str) -> None:
    path = _write(tmp_path / "labels.csv", text)
    with pytest.raises(UWMInputError, match=culprit) as error:
        read_label_csv(path)
    assert "labels.csv" in str(error.value)
    assert "\n" not in str(error.value)


def test_missing_csv_is_named(tmp_path: Path) -> None:
    with pytest.raises(UWMInputError, match=r"nope\.csv"):
        read_label_csv(tmp_path / "nope.csv")


def test_read_prediction_csv_accepts_either_column_name(tmp_path: Path) -> None:
    by_segmentation = read_prediction_csv(_write(tmp_path / "a.csv", GOOD))
    by_predicted = read_prediction_csv(
        _write(tmp_path / "b.csv", GOOD.replace("segmentation", "predicted"))
    )
    pd.testing.assert_frame_equal(by_segmentation, by_predicted)
    assert by_predicted.columns.tolist() == ["id", "class", "predicted"]


@pytest.mark.parametrize(
    "header", ["id,class,predicted,segmentation", "id,class,rle", "id,predicted"]
)
def test_read_prediction_csv_needs_exactly_its_columns(tmp_path: Path, header: str) -> None:
    path = _write(tmp_path / "sub.csv", header + "\n")
    with pytest.raises(UWMInputError, match=r"sub\.csv"):
        read_prediction_csv(path)


def test_index_data_root_joins_train_and_test(tmp_path: Path) -> None:
    root = _scans_root(tmp_path)
    _touch(root, f"test/case7/case7_day1/scans/{NAME.format(3)}")
    scans = index_data_root(root)
    assert scans["id"].tolist()[-1] == "case7_day1_slice_0003"
    assert len(scans) == len(index_scans(root, "train")) + 1
    assert scans.index.tolist() == list(range(len(scans)))
    pd.testing.assert_frame_equal(index_data_root(root, "test"), index_scans(root, "test"))


def test_index_data_root_refuses_what_cannot_be_one_index(tmp_path: Path) -> None:
    with pytest.raises(UWMInputError, match="is not a folder"):
        index_data_root(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UWMInputError, match="neither a train/ nor a test/"):
        index_data_root(tmp_path / "empty")
    root = _scans_root(tmp_path)
    _touch(root, f"test/case2/case2_day5/scans/{NAME.format(1)}")
    with pytest.raises(UWMInputError, match="case2_day5_slice_0001 is in both train/ and test/"):
        index_data_root(root)


def test_require_columns_names_what_is_missing() -> None:
    frame = pd.DataFrame(columns=["id", "rle"])
    require_columns(frame, ("id",), "x.csv")
    with pytest.raises(UWMInputError) as caught:
        require_columns(frame, ("id", "class", "predicted"), "CSV 'x.csv'")
    assert str(caught.value) == (
        "CSV 'x.csv': no column 'class', 'predicted' (columns: 'id', 'rle')"
    )
    with pytest.raises(UWMInputError, match=r"^a\.csv: no column 'class' \(needs id, class\)$"):
        require_columns(frame, ("class",), "a.csv", "needs id, class")
