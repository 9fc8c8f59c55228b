"""NIfTI export of a data root and back: geometry, voxels, the label rule, RLE rows, volumes.

Everything is read back with nibabel and checked against the PNGs and the CSV rows decoded on
their own, on the phantom's 360x310 (W x H) scans, where a transposed or column-major layout shows.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from uwm_d2.core.errors import UWMInputError
from uwm_d2.core.ids import CLASSES
from uwm_d2.core.io import read_scan
from uwm_d2.core.layout_reader import index_scans, read_label_csv
from uwm_d2.core.nifti import case_day_affine, nifti_rle_rows
from uwm_d2.core.rle import rle_decode
from uwm_d2.data.nifti_export import export_case_days

WIDTH, HEIGHT = 360, 310


def _data(path: Path) -> np.ndarray:
    return np.asanyarray(nib.load(str(path)).dataobj)


def _case_days(root: Path) -> dict[str, pd.DataFrame]:
    scans = index_scans(root, "test")
    return {case_day: group for case_day, group in scans.groupby("case_day")}


def _decoded(truth: pd.DataFrame, group: pd.DataFrame) -> np.ndarray:
    """``(C, D, H, W)`` masks of one case-day from the CSV rows, decoded one by one."""
    masks = np.zeros((len(CLASSES), len(group), HEIGHT, WIDTH), dtype=bool)
    rows = truth.set_index(["id", "class"])["segmentation"]
    for depth, slice_id in enumerate(group.sort_values("slice")["id"]):
        for index, name in enumerate(CLASSES):
            masks[index, depth] = rle_decode(rows[slice_id, name], (HEIGHT, WIDTH)).astype(bool)
    return masks


@pytest.fixture(scope="module")
def exported(phantom_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("nifti") / "out"
    summary = export_case_days(
        phantom_root,
        phantom_root / "test_truth.csv",
        out,
        split="test",
        per_class=True,
        volumes_csv=out / "volumes.csv",
        progress=False,
    )
    assert summary.case_days and summary.files == 5 * len(summary.case_days) + 1
    return out


def test_scan_geometry_and_voxels_match_the_pngs(phantom_root: Path, exported: Path) -> None:
    for case_day, group in _case_days(phantom_root).items():
        assert (group["width"].iloc[0], group["height"].iloc[0]) == (WIDTH, HEIGHT)
        image = nib.load(str(exported / f"{case_day}.nii.gz"))
        assert image.shape == (WIDTH, HEIGHT, len(group))
        assert image.get_data_dtype() == np.uint16
        assert tuple(map(float, image.header.get_zooms())) == (1.5, 1.5, 3.0)
        np.testing.assert_array_equal(image.affine, np.diag([-1.5, -1.5, 3.0, 1.0]))
        assert nib.aff2axcodes(image.affine) == ("L", "P", "S")
        assert int(image.header["qform_code"]) == int(image.header["sform_code"]) == 2
        data = np.asanyarray(image.dataobj)
        for depth, path in enumerate(group.sort_values("slice")["path"]):
            png = read_scan(phantom_root / path)
            np.testing.assert_array_equal(data[:, :, depth], png.T)  # data[x, y, k] = png[y, x]


def test_labels_and_masks_match_the_decoded_rows(phantom_root: Path, exported: Path) -> None:
    truth = read_label_csv(phantom_root / "test_truth.csv")
    for case_day, group in _case_days(phantom_root).items():
        masks = _decoded(truth, group)
        assert masks.any()
        for index, name in enumerate(CLASSES):
            image = nib.load(str(exported / f"{case_day}_{name}.nii.gz"))
            assert image.get_data_dtype() == np.uint8
            np.testing.assert_array_equal(image.affine, case_day_affine(1.5, 1.5))
            np.testing.assert_array_equal(_data(image.get_filename()), masks[index].T)
        large, small, stomach = masks
        expected = np.where(stomach, 3, np.where(small, 2, np.where(large, 1, 0)))
        np.testing.assert_array_equal(_data(exported / f"{case_day}_seg.nii.gz"), expected.T)


def _one_case_day_csv(root: Path, path: Path, rows: dict[tuple[int, str], str]) -> str:
    """A CSV of the first test case-day: every slice, empty but for ``{(slice, class): rle}``."""
    case_day, group = next(iter(_case_days(root).items()))
    lines = [
        (slice_id, name, rows.get((int(number), name), ""))
        for slice_id, number in zip(group["id"], group["slice"], strict=True)
        for name in CLASSES
    ]
    pd.DataFrame(lines, columns=["id", "class", "segmentation"]).to_csv(path, index=False)
    return case_day


def test_row_major_layout_and_overlap_priority_by_hand(phantom_root: Path, tmp_path: Path) -> None:
    # Row 2, columns 5..7 (row-major, 1-based: 2 * 360 + 5 + 1 = 726), in all three classes;
    # row 3, columns 5..6 in large bowel only; row 0, column 0 in small and large bowel.
    csv = tmp_path / "rows.csv"
    case_day = _one_case_day_csv(
        phantom_root,
        csv,
        {
            (2, "large_bowel"): "1 1 726 3 1086 2",
            (2, "small_bowel"): "1 1 726 3",
            (2, "stomach"): "726 3",
        },
    )
    export_case_days(phantom_root, csv, tmp_path / "out", per_class=True, progress=False)
    seg = _data(tmp_path / "out" / f"{case_day}_seg.nii.gz")
    assert seg.shape[:2] == (WIDTH, HEIGHT)
    expected = np.zeros(seg.shape, dtype=np.uint8)
    expected[5:8, 2, 1] = 3  # stomach wins over both bowels
    expected[5:7, 3, 1] = 1
    expected[0, 0, 1] = 2  # small bowel wins over large bowel
    np.testing.assert_array_equal(seg, expected)
    large = _data(tmp_path / "out" / f"{case_day}_large_bowel.nii.gz")
    assert np.count_nonzero(large) == 6 and large[5:8, 2, 1].all() and large[0, 0, 1]


def test_nifti_to_rle_to_nifti_round_trip(phantom_root: Path, exported: Path, tmp_path: Path):
    truth = read_label_csv(phantom_root / "test_truth.csv")
    for case_day, group in _case_days(phantom_root).items():
        numbers = group.sort_values("slice")["slice"].tolist()
        # Per-class masks: exact, so the rows are the truth's own rows, string for string.
        files = {name: exported / f"{case_day}_{name}.nii.gz" for name in CLASSES}
        rows = nifti_rle_rows(case_day, class_files=files, slice_numbers=numbers)
        own = truth[truth["id"].isin(group["id"])].reset_index(drop=True)
        pd.testing.assert_frame_equal(
            rows.sort_values(["id", "class"], ignore_index=True),
            own.sort_values(["id", "class"], ignore_index=True),
        )
        # Label map: NIfTI -> rows -> NIfTI gives the same labels back.
        seg = exported / f"{case_day}_seg.nii.gz"
        rows = nifti_rle_rows(case_day, labels=seg, slice_numbers=numbers)
        rows.to_csv(tmp_path / f"{case_day}.csv", index=False)
        again = tmp_path / case_day
        export_case_days(phantom_root, tmp_path / f"{case_day}.csv", again, progress=False)
        np.testing.assert_array_equal(_data(again / f"{case_day}_seg.nii.gz"), _data(seg))
        np.testing.assert_array_equal(
            nib.load(str(again / f"{case_day}_seg.nii.gz")).affine, nib.load(str(seg)).affine
        )


def test_volumes_csv_matches_a_direct_count(phantom_root: Path, exported: Path) -> None:
    truth = read_label_csv(phantom_root / "test_truth.csv")
    volumes = pd.read_csv(exported / "volumes.csv")
    assert list(volumes.columns) == ["case_day", "class", "voxels", "volume_ml"]
    groups = _case_days(phantom_root)
    assert len(volumes) == 3 * len(groups)
    for case_day, group in groups.items():
        masks = _decoded(truth, group)
        for index, name in enumerate(CLASSES):
            row = volumes[(volumes["case_day"] == case_day) & (volumes["class"] == name)].iloc[0]
            voxels = int(masks[index].sum())
            assert row["voxels"] == voxels
            assert row["volume_ml"] == pytest.approx(voxels * 1.5 * 1.5 * 3.0 / 1000, abs=1e-4)


def test_export_refuses_bad_input_and_writes_nothing(phantom_copy: Path, tmp_path: Path) -> None:
    truth = phantom_copy / "test_truth.csv"
    out = tmp_path / "out"
    a_file = tmp_path / "file"
    a_file.write_text("")
    with pytest.raises(UWMInputError, match="unknown case-day 'case999_day0'"):
        export_case_days(phantom_copy, truth, out, case_days=["case999_day0"], progress=False)
    with pytest.raises(UWMInputError, match="malformed case-day"):
        export_case_days(phantom_copy, truth, out, case_days=["case1"], progress=False)
    with pytest.raises(UWMInputError, match="is a file"):
        export_case_days(phantom_copy, truth, a_file / "out", progress=False)
    with pytest.raises(UWMInputError, match="has no scan under"):
        export_case_days(phantom_copy, truth, out, split="train", progress=False)
    assert not out.exists()
    # A scan that breaks half way: the files of the case-days before it are removed again.
    last = sorted((phantom_copy / "test").rglob("*.png"))[-1]
    last.write_bytes(last.read_bytes()[:100])
    out.mkdir()
    with pytest.raises(UWMInputError, match="truncated"):
        export_case_days(phantom_copy, truth, out, progress=False)
    assert list(out.iterdir()) == []
