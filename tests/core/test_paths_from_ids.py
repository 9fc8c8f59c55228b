"""Paths are only built from validated ids: an id that smuggles a path is refused by every reader.

Every path the tools open comes from :func:`uwm_d2.core.layout_reader.index_scans` (folder and file
names matched against strict patterns); CSV ids are only compared with those validated ids, never
joined into a path. This test pins the first line of that defence: the CSV readers reject any id
that is not exactly ``case<N>_day<M>_slice_<ZZZZ>``, so nothing path-like gets past them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from uwm_d2.core.errors import UWMInputError
from uwm_d2.core.layout_reader import read_label_csv, read_prediction_csv

PATH_LIKE_IDS = [
    "case1_day1_slice_0001/../../x",
    "../case1_day1_slice_0001",
    "case1_day1_slice_0001/",
    "case1/case1_day1/scans/slice_0001",
    "case1_day1_slice_0001\\..\\x",
    "/etc/passwd",
    "case1_day1_slice_0001\x00.png",
    "~/case1_day1_slice_0001",
    "case1_day1_slice_0001 ",
]


def _write(path: Path, header: str, slice_id: str) -> Path:
    good = "case1_day1_slice_0002"
    rows = [f"{good},large_bowel,", f'"{slice_id}",small_bowel,', f"{good},stomach,"]
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


@pytest.mark.parametrize("slice_id", PATH_LIKE_IDS)
def test_read_label_csv_rejects_path_like_ids(tmp_path: Path, slice_id: str) -> None:
    path = _write(tmp_path / "train.csv", "id,class,segmentation", slice_id)
    with pytest.raises(UWMInputError, match="malformed slice id") as caught:
        read_label_csv(path)
    assert repr(slice_id) in str(caught.value) and "train.csv" in str(caught.value)


@pytest.mark.parametrize("slice_id", PATH_LIKE_IDS)
@pytest.mark.parametrize("column", ["predicted", "segmentation"])
def test_read_prediction_csv_rejects_path_like_ids(
    tmp_path: Path, slice_id: str, column: str
) -> None:
    path = _write(tmp_path / "submission.csv", f"id,class,{column}", slice_id)
    with pytest.raises(UWMInputError, match="malformed slice id") as caught:
        read_prediction_csv(path)
    assert repr(slice_id) in str(caught.value)


def test_the_same_rows_with_a_plain_id_are_accepted(tmp_path: Path) -> None:
    """The rejection above is about the id, not about the rest of the file."""
    path = _write(tmp_path / "train.csv", "id,class,segmentation", "case1_day1_slice_0003")
    assert list(read_label_csv(path)["id"])[1] == "case1_day1_slice_0003"
