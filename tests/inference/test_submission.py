"""Submission rows: sample order, header-only file, sorted rows without a sample, (H, W) RLE."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from uwm_d2.core.rle import rle_decode
from uwm_d2.inference.submission import (
    build_submission,
    encode_class_masks,
    read_sample_submission,
    write_submission,
)


def _masks(height: int, width: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.random((3, height, width)) > 0.7


def test_rows_follow_the_sample_order_exactly(tmp_path):
    masks = {"case1_day2_slice_0003": _masks(4, 5, 0), "case1_day2_slice_0010": _masks(4, 5, 1)}
    encoded = encode_class_masks(masks)
    sample = pd.DataFrame(
        {
            "id": ["case1_day2_slice_0010", "case1_day2_slice_0003", "case1_day2_slice_0010"],
            "class": ["stomach", "large_bowel", "small_bowel"],
            "predicted": ["", "", ""],
        }
    )
    frame = build_submission(encoded, sample)
    assert list(zip(frame["id"], frame["class"], strict=True)) == list(
        zip(sample["id"], sample["class"], strict=True)
    )
    decoded = rle_decode(frame["predicted"][0], (4, 5))
    np.testing.assert_array_equal(decoded.astype(bool), masks["case1_day2_slice_0010"][2])


def test_without_sample_rows_are_sorted_by_slice_number_then_class():
    masks = {
        "case10_day1_slice_0002": _masks(3, 3, 2),
        "case2_day1_slice_0011": _masks(3, 3, 3),
        "case2_day1_slice_0009": _masks(3, 3, 4),
    }
    frame = build_submission(encode_class_masks(masks))
    assert frame["id"].tolist()[::3] == [
        "case2_day1_slice_0009",
        "case2_day1_slice_0011",
        "case10_day1_slice_0002",
    ]
    assert frame["class"].tolist()[:3] == ["large_bowel", "small_bowel", "stomach"]


def test_non_square_mask_is_encoded_row_major_at_its_own_shape():
    mask = np.zeros((3, 310, 360), dtype=bool)
    mask[1, 100:102, 7] = True  # two pixels, one below the other
    rle = encode_class_masks({"case1_day1_slice_0001": mask})[
        ("case1_day1_slice_0001", "small_bowel")
    ]
    assert rle == f"{100 * 360 + 7 + 1} 1 {101 * 360 + 7 + 1} 1"


def test_empty_sample_gives_a_header_only_file(tmp_path):
    sample_path = tmp_path / "sample_submission.csv"
    sample_path.write_text("id,class,predicted\n")
    sample = read_sample_submission(sample_path)
    out = write_submission(build_submission({}, sample), tmp_path / "submission.csv")
    assert out.read_text().strip() == "id,class,predicted"


def test_write_refuses_a_missing_folder_and_leaves_nothing(tmp_path):
    frame = build_submission({})
    with pytest.raises(ValueError, match="does not exist"):
        write_submission(frame, tmp_path / "nope" / "submission.csv")
    assert list(tmp_path.iterdir()) == []
