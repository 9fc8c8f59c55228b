"""COCO building: exact round trips of the competition masks, holes kept, empty slices kept."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pycocotools import mask as mask_util

from uwm_d2.core.errors import UWMInputError
from uwm_d2.core.ids import CLASSES
from uwm_d2.core.layout import index_scans, read_label_csv
from uwm_d2.core.rle import rle_decode, rle_encode
from uwm_d2.data.coco import BAD_CASE_DAYS, build_coco, make_coco, mask_annotations

# pycocotools' decode trips a numpy 2 deprecation inside pycocotools itself; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def _union_by_class(dataset: dict, image: dict) -> dict[str, np.ndarray]:
    """Decode every annotation of ``image`` with pycocotools and OR them per class."""
    union = {name: np.zeros((image["height"], image["width"]), np.uint8) for name in CLASSES}
    for ann in dataset["annotations"]:
        if ann["image_id"] == image["id"]:
            decoded = mask_util.decode(ann["segmentation"])
            assert decoded.shape == (image["height"], image["width"])
            union[CLASSES[ann["category_id"] - 1]] |= decoded
    return union


def _assert_round_trip(root: Path, dataset: dict) -> None:
    labels = read_label_csv(root / "train.csv").set_index(["id", "class"])["segmentation"]
    for image in dataset["images"]:
        union = _union_by_class(dataset, image)
        for name in CLASSES:
            truth = rle_decode(labels[(image["slice_id"], name)], union[name].shape)
            np.testing.assert_array_equal(union[name], truth, err_msg=f"{image['slice_id']} {name}")


def test_phantom_round_trip_is_exact(phantom_root: Path) -> None:
    build = build_coco(phantom_root, num_folds=3, workers=1, progress=False)
    _assert_round_trip(phantom_root, build.all)
    scans = index_scans(phantom_root, "train")
    images = build.all["images"]
    # Every slice exactly once, empty ones included, with the competition's facts attached.
    assert [image["slice_id"] for image in images] == scans["id"].tolist()
    assert sum(1 for image in images if image["width"] == 360 and image["height"] == 310) > 0
    annotated = {ann["image_id"] for ann in build.all["annotations"]}
    assert 0 < len(annotated) < len(images)
    first = images[0]
    assert first["file_name"] == scans.iloc[0]["path"]
    assert (root_path := phantom_root / first["file_name"]).is_file(), root_path
    for key in ("case", "day", "slice", "case_day", "spacing_x", "spacing_y"):
        assert first[key] == scans.iloc[0][key]
    assert [c["name"] for c in build.all["categories"]] == list(CLASSES)
    assert [c["id"] for c in build.all["categories"]] == [1, 2, 3]


def _custom_slice(phantom_copy: Path) -> tuple[str, tuple[int, int], dict[str, np.ndarray]]:
    """Rewrite the labels of one 360x310 slice with hand-made corner cases."""
    scans = index_scans(phantom_copy, "train")
    wide = scans[(scans["width"] == 360) & (scans["height"] == 310)].iloc[0]
    shape = (310, 360)
    ring = np.zeros(shape, np.uint8)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    distance = np.hypot(yy - 100, xx - 250)
    ring[(distance < 30) & (distance >= 15)] = 1  # a ring: one instance with a hole
    ring[(distance < 6)] = 1  # an island inside the hole: its own instance
    dots = np.zeros(shape, np.uint8)
    dots[0, 0] = dots[309, 359] = dots[150, 3] = 1  # one-pixel objects, two in corners
    dots[200, 200] = dots[201, 201] = 1  # diagonal neighbours: one 8-connected object
    border = np.zeros(shape, np.uint8)
    border[250:310, 330:360] = 1  # touches the right and bottom borders
    border[0:5, 100:140] = 1  # touches the top border
    masks = {"large_bowel": ring, "small_bowel": dots, "stomach": border}
    labels = pd.read_csv(phantom_copy / "train.csv", dtype=str, keep_default_na=False)
    for name, mask in masks.items():
        labels.loc[(labels["id"] == wide["id"]) & (labels["class"] == name), "segmentation"] = (
            rle_encode(mask)
        )
    labels.to_csv(phantom_copy / "train.csv", index=False)
    return wide["id"], shape, masks


def test_holes_single_pixels_and_borders_survive(phantom_copy: Path) -> None:
    slice_id, _, masks = _custom_slice(phantom_copy)
    build = build_coco(phantom_copy, num_folds=3, workers=1, progress=False)
    _assert_round_trip(phantom_copy, build.all)
    image = next(i for i in build.all["images"] if i["slice_id"] == slice_id)
    union = _union_by_class(build.all, image)
    for name, mask in masks.items():  # against the hand-made arrays, not only the CSV
        np.testing.assert_array_equal(union[name], mask, err_msg=name)
    anns = [a for a in build.all["annotations"] if a["image_id"] == image["id"]]
    by_class = {
        name: [a for a in anns if a["category_id"] == k + 1] for k, name in enumerate(CLASSES)
    }
    # The ring is one instance whose mask keeps its hole; the island is a second instance.
    assert len(by_class["large_bowel"]) == 2
    ring = max(by_class["large_bowel"], key=lambda a: a["area"])
    decoded = mask_util.decode(ring["segmentation"])
    assert decoded[100, 250] == 0 and decoded[100, 250 + 20] == 1
    assert ring["area"] == int(decoded.sum()) == int(mask_util.area(ring["segmentation"]))
    assert ring["bbox"] == [221, 71, 59, 59]
    assert ring["segmentation"]["size"] == [310, 360]
    # One-pixel objects keep a 1x1 box; diagonal neighbours join under 8-connectivity.
    dots = sorted(by_class["small_bowel"], key=lambda a: a["bbox"][1])
    assert [a["bbox"] for a in dots] == [
        [0, 0, 1, 1],
        [3, 150, 1, 1],
        [200, 200, 2, 2],
        [359, 309, 1, 1],
    ]
    assert [a["area"] for a in dots] == [1, 1, 2, 1]
    boxes = sorted(a["bbox"] for a in by_class["stomach"])
    assert boxes == [[100, 0, 40, 5], [330, 250, 30, 60]]
    for ann in anns:
        assert isinstance(ann["segmentation"]["counts"], str)
        assert ann["iscrowd"] == 0


def test_mask_annotations_of_an_empty_mask_is_empty() -> None:
    assert mask_annotations(np.zeros((4, 5), np.uint8), 1) == []


def test_files_hold_each_slice_once_with_consistent_ids(phantom_root: Path, tmp_path: Path) -> None:
    build = make_coco(phantom_root, tmp_path / "coco", num_folds=2, workers=1, progress=False)
    names = sorted(path.name for path in (tmp_path / "coco").iterdir())
    assert names == [
        "all.json",
        "manifest.json",
        "train_fold0.json",
        "train_fold1.json",
        "val_fold0.json",
        "val_fold1.json",
    ]
    everything = json.loads((tmp_path / "coco/all.json").read_text())
    assert everything == json.loads(json.dumps(build.all))
    image_ids = [image["id"] for image in everything["images"]]
    ann_ids = [ann["id"] for ann in everything["annotations"]]
    assert len(set(image_ids)) == len(image_ids) and len(set(ann_ids)) == len(ann_ids)
    assert len({image["slice_id"] for image in everything["images"]}) == len(image_ids)
    by_id = {ann["id"]: ann for ann in everything["annotations"]}
    manifest = json.loads((tmp_path / "coco/manifest.json").read_text())
    assert manifest["num_folds"] == 2
    assert manifest["files"] == {
        name: (tmp_path / "coco" / name).stat().st_size for name in names if name != "manifest.json"
    }
    for name in names[2:]:
        part = json.loads((tmp_path / "coco" / name).read_text())
        slice_ids = [image["slice_id"] for image in part["images"]]
        assert len(set(slice_ids)) == len(slice_ids)
        kept = {image["id"] for image in part["images"]}
        for ann in part["annotations"]:
            assert ann == by_id[ann["id"]] and ann["image_id"] in kept
        assert len(part["annotations"]) == sum(a["image_id"] in kept for a in by_id.values())


def test_worker_processes_give_the_same_result(phantom_root: Path) -> None:
    one = build_coco(phantom_root, num_folds=2, workers=1, progress=False)
    two = build_coco(phantom_root, num_folds=2, workers=2, progress=False)
    assert one.all == two.all and one.folds == two.folds


def test_exclude_bad_drops_the_listed_case_days(tiny_phantom_factory: Callable) -> None:
    root = tiny_phantom_factory(case_days={7: [0, 2], 20: [1]}, test_days_from_train=0)
    assert "case7_day0" in BAD_CASE_DAYS
    kept = build_coco(root, num_folds=2, workers=1, progress=False)
    dropped = build_coco(root, num_folds=2, exclude_bad=True, workers=1, progress=False)
    assert "case7_day0" in {image["case_day"] for image in kept.all["images"]}
    case_days = {image["case_day"] for image in dropped.all["images"]}
    assert case_days == {"case7_day2", "case20_day1"}
    assert dropped.all["info"]["exclude_bad"] is True
    _assert_round_trip(root, dropped.all)


def test_a_bad_rle_is_reported_with_its_row_and_nothing_is_written(
    phantom_copy: Path, tmp_path: Path
) -> None:
    labels = pd.read_csv(phantom_copy / "train.csv", dtype=str, keep_default_na=False)
    labels.loc[5, "segmentation"] = "10 5 3 2"
    labels.to_csv(phantom_copy / "train.csv", index=False)
    with pytest.raises(UWMInputError, match=f"row {labels.loc[5, 'id']} {labels.loc[5, 'class']}"):
        make_coco(phantom_copy, tmp_path / "out", num_folds=2, workers=1, progress=False)
    assert not (tmp_path / "out").exists()


def test_an_unlabelled_scan_and_a_missing_class_row_are_errors(phantom_copy: Path) -> None:
    labels = pd.read_csv(phantom_copy / "train.csv", dtype=str, keep_default_na=False)
    labels.iloc[1:].to_csv(phantom_copy / "train.csv", index=False)
    with pytest.raises(UWMInputError, match=f"{labels.loc[0, 'id']} has no row for class"):
        build_coco(phantom_copy, num_folds=2, workers=1, progress=False)
    labels.iloc[3:].to_csv(phantom_copy / "train.csv", index=False)
    with pytest.raises(UWMInputError, match=r"has no rows in train\.csv"):
        build_coco(phantom_copy, num_folds=2, workers=1, progress=False)


def test_rebuilding_with_other_folds_says_what_it_replaces(
    phantom_root: Path, tmp_path: Path
) -> None:
    from uwm_d2.data.splits import assignment_digest, fold_assignment

    out = tmp_path / "coco"
    first = make_coco(phantom_root, out, num_folds=2, workers=1, progress=False)
    assert first.replaced == ""  # a new folder replaces nothing
    assert fold_assignment(out) == first.folds
    old_digest = assignment_digest(first.folds)
    again = make_coco(phantom_root, out, num_folds=2, workers=1, progress=False)
    assert again.replaced == ""  # the same folds again
    other = make_coco(phantom_root, out, num_folds=3, workers=1, progress=False)
    assert f"2 folds (assignment {old_digest}) become 3 folds" in other.replaced
    assert "refuse to resume" in other.replaced
    assert fold_assignment(out) == other.folds
