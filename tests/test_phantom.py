"""The synthetic data root: deterministic, in the competition layout, and realistic enough."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from uwm_d2.core.errors import UWMInputError
from uwm_d2.core.ids import CLASSES, parse_scan_name
from uwm_d2.core.layout import index_scans, read_label_csv, read_prediction_csv
from uwm_d2.core.rle import rle_decode
from uwm_d2.phantom import make_phantom

SMALL = {"cases": 2, "test_cases": 1, "max_slices": 6, "days_per_case": 2, "progress": False}


def _digest(root: Path) -> dict[str, str]:
    return {
        path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def _masks(root: Path, csv_name: str = "train.csv") -> pd.DataFrame:
    """Every label row with its decoded mask, shapes from the scan names on disk."""
    labels = read_label_csv(root / csv_name)
    split = "train" if csv_name == "train.csv" else "test"
    shapes = index_scans(root, split).set_index("id")
    labels["mask"] = [
        rle_decode(rle, (shapes.at[i, "height"], shapes.at[i, "width"]))
        for i, rle in zip(labels["id"], labels["segmentation"], strict=True)
    ]
    return labels


def test_same_seed_gives_identical_files_and_another_seed_differs(tmp_path: Path) -> None:
    first = _digest(make_phantom(tmp_path / "a", seed=3, workers=1, **SMALL).root)
    again = _digest(make_phantom(tmp_path / "b", seed=3, workers=2, **SMALL).root)
    other = _digest(make_phantom(tmp_path / "c", seed=4, workers=1, **SMALL).root)
    assert first == again  # also: worker processes do not change a byte
    assert len(first) > 20
    assert first != other


def test_layout_is_the_competitions(phantom_root: Path) -> None:
    train = index_scans(phantom_root, "train")
    test = index_scans(phantom_root, "test")
    assert len(train) > 0 and len(test) > 0
    assert not set(train["id"]) & set(test["id"])
    labels = read_label_csv(phantom_root / "train.csv")
    assert len(labels) == 3 * len(train)
    assert set(labels["id"]) == set(train["id"])
    assert all(group == CLASSES for group in labels.groupby("id")["class"].apply(tuple))
    truth = read_label_csv(phantom_root / "test_truth.csv")
    submission = read_prediction_csv(phantom_root / "sample_submission.csv")
    assert set(truth["id"]) == set(test["id"]) == set(submission["id"])
    assert (submission["predicted"] == "").all()
    assert len(submission) == len(truth) == 3 * len(test)


def test_about_half_of_the_slices_have_no_organ(tiny_phantom_factory: Callable) -> None:
    root = tiny_phantom_factory(cases=3, max_slices=32)
    labels = read_label_csv(root / "train.csv")
    empty = labels.groupby("id")["segmentation"].apply(lambda rles: (rles == "").all())
    assert 0.25 <= empty.mean() <= 0.75
    for name in CLASSES:  # every organ shows up somewhere
        assert (labels.loc[labels["class"] == name, "segmentation"] != "").any()


def test_scans_are_16_bit_with_values_in_the_thousands(phantom_root: Path) -> None:
    scans = index_scans(phantom_root, "train")
    middle = scans.iloc[len(scans) // 2]
    image = cv2.imread(str(phantom_root / middle["path"]), cv2.IMREAD_UNCHANGED)
    assert image.dtype == np.uint16
    assert image.max() > 1000
    assert image.shape == (middle["height"], middle["width"])


def test_organs_differ_from_their_surroundings(tiny_phantom_factory: Callable) -> None:
    root = tiny_phantom_factory(cases=3, max_slices=32)
    labels = _masks(root)
    scans = index_scans(root, "train").set_index("id")
    contrasts = []
    for _, row in labels[labels["mask"].map(np.sum) > 50].head(60).iterrows():
        image = cv2.imread(str(root / scans.at[row["id"], "path"]), cv2.IMREAD_UNCHANGED)
        organ = row["mask"] > 0
        ring = ndimage.binary_dilation(organ, iterations=4) & ~organ
        contrasts.append(abs(image[organ].mean() - image[ring].mean()) / image[ring].std())
    assert np.median(contrasts) > 0.3


def test_large_bowel_masks_have_holes(tiny_phantom_factory: Callable) -> None:
    labels = _masks(tiny_phantom_factory(cases=3, max_slices=32))
    bowel = labels.loc[labels["class"] == "large_bowel", "mask"]
    holes = [ndimage.binary_fill_holes(m).sum() - m.sum() for m in bowel]
    assert max(holes) > 10


def test_a_360x310_scan_is_a_310x360_array(phantom_root: Path) -> None:
    for split in ("train", "test"):
        scans = index_scans(phantom_root, split)
        wide = scans[(scans["width"] == 360) & (scans["height"] == 310)]
        assert len(wide) > 0, split
        image = cv2.imread(str(phantom_root / wide.iloc[0]["path"]), cv2.IMREAD_UNCHANGED)
        assert image.shape == (310, 360)
        assert parse_scan_name(Path(wide.iloc[0]["path"]).name).shape == (310, 360)


def test_explicit_case_days_and_refusals(tmp_path: Path) -> None:
    summary = make_phantom(
        tmp_path / "p",
        case_days={7: [0, 3]},
        test_cases=0,
        test_days_from_train=0,
        max_slices=2,
        workers=1,
        progress=False,
    )
    assert summary.train_case_days == ("case7_day0", "case7_day3")
    with pytest.raises(UWMInputError, match="not empty"):
        make_phantom(tmp_path / "p", max_slices=2, workers=1, progress=False)
    with pytest.raises(UWMInputError, match="parent"):
        make_phantom(tmp_path / "missing" / "p", max_slices=2, workers=1, progress=False)
