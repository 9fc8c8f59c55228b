"""The synthetic data root: deterministic, in the competition layout, and as hard as real scans.

The realism tests read one small build of eight case-days back from disk (PNGs and CSV labels, as
any user of the data would) and check the properties that make real abdomens hard: many small
small-bowel pieces, intensities shared with the surroundings, wide gain differences, empty slices,
ring-shaped colon labels and organs cut by the image border.
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from uwm_d2.core.errors import UWMInputError
from uwm_d2.core.ids import CLASSES, parse_scan_name
from uwm_d2.core.layout_reader import index_scans, read_label_csv, read_prediction_csv
from uwm_d2.core.rle import rle_decode
from uwm_d2.phantom import GEOMETRIES, make_phantom

from .conftest import REPO_ROOT

SMALL = {"cases": 2, "test_cases": 1, "max_slices": 6, "days_per_case": 2, "progress": False}
#: 3 training cases x 2 days (one later day moved to test/) + 1 unseen test case x 2 days: 8
#: case-days of 40 slices each, sampled over the full height of the anatomy.
REALISM = {"cases": 3, "test_cases": 1, "days_per_case": 2, "max_slices": 40}


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
    assert 0.35 <= empty.mean() <= 0.65
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
    (tmp_path / "file").write_text("x")
    with pytest.raises(UWMInputError, match=r"'.*file' is a file"):
        make_phantom(tmp_path / "file" / "p", max_slices=2, workers=1, progress=False)


def test_the_tool_creates_missing_parents_and_leaves_nothing_on_bad_input(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    spec = importlib.util.spec_from_file_location("tool", REPO_ROOT / "tools" / "make_phantom.py")
    assert spec is not None and spec.loader is not None
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)

    def run(out: Path, *args: str) -> None:
        tiny = ["--max-slices", "2", "--test-cases", "0", "--workers", "1"]
        monkeypatch.setattr(sys, "argv", ["make_phantom.py", "--out", str(out), *tiny, *args])
        tool.main()

    # A bad count is refused by the parser, naming its flag, before any folder is made.
    with pytest.raises(SystemExit) as exited:
        run(tmp_path / "a" / "b" / "data", "--cases", "0")
    assert exited.value.code == 2
    assert "argument --cases: must be >= 1, got 0" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "file").write_text("x")
    with pytest.raises(UWMInputError, match=r"cannot be created: '.*file' is a file"):
        run(tmp_path / "file" / "b" / "data")
    run(tmp_path / "a" / "b" / "data", "--cases", "1")
    assert (tmp_path / "a" / "b" / "data" / "train.csv").is_file()
    assert "phantom data root" in capsys.readouterr().out


# ----------------------------------------------------------------------------------------------
# Realism: one build read back from disk


@dataclass(frozen=True)
class Realism:
    """Per-slice facts of the realism build, and pixel samples per case-day."""

    slices: pd.DataFrame
    #: case-day -> (small-bowel pixels, body pixels outside every organ)
    pixels: dict[str, tuple[np.ndarray, np.ndarray]]


@pytest.fixture(scope="module")
def realism(tiny_phantom_factory: Callable) -> Realism:
    root = tiny_phantom_factory(**REALISM)
    facts, small, rest = [], {}, {}
    for split, csv_name in (("train", "train.csv"), ("test", "test_truth.csv")):
        scans = index_scans(root, split).set_index("id")
        depth = scans.groupby("case_day")["slice"].max()
        for slice_id, rows in read_label_csv(root / csv_name).groupby("id", sort=False):
            scan = scans.loc[slice_id]
            image = cv2.imread(str(root / scan["path"]), cv2.IMREAD_UNCHANGED)
            masks = {
                name: rle_decode(rle, image.shape)
                for name, rle in zip(rows["class"], rows["segmentation"], strict=True)
            }
            organs = np.logical_or.reduce([mask > 0 for mask in masks.values()])
            sb = masks["small_bowel"] > 0
            pieces, count = ndimage.label(sb, np.ones((3, 3)))
            widths = [
                max(s[0].stop - s[0].start, s[1].stop - s[1].start)
                for s in ndimage.find_objects(pieces)
            ]
            lb = masks["large_bowel"] > 0
            # The body from the pixels alone: brighter than the air around it, holes filled.
            body = ndimage.binary_fill_holes(image > 0.2 * np.percentile(image, 99))
            case_day = scan["case_day"]
            small.setdefault(case_day, []).append(image[sb])
            rest.setdefault(case_day, []).append(image[body & ~organs])
            facts.append(
                {
                    "case_day": case_day,
                    "height": (scan["slice"] - 0.5) / depth[case_day],
                    "size": f"{scan['width']}x{scan['height']}",
                    "maximum": int(image.max()),
                    "empty": not organs.any(),
                    "small_bowel_pieces": count,
                    "narrow_pieces": sum(width < 17 for width in widths),
                    "large_bowel": bool(lb.any()),
                    "large_bowel_hole": int(ndimage.binary_fill_holes(lb).sum() - lb.sum()),
                    "stomach": bool(masks["stomach"].any()),
                    "on_border": any(
                        m[0].any() or m[-1].any() or m[:, 0].any() or m[:, -1].any()
                        for m in masks.values()
                    ),
                }
            )
    pixels = {key: (np.concatenate(small[key]), np.concatenate(rest[key])) for key in small}
    return Realism(pd.DataFrame(facts), pixels)


def test_realism_build_has_eight_case_days_and_half_empty_slices(realism: Realism) -> None:
    slices = realism.slices
    assert slices["case_day"].nunique() == 8
    assert 0.35 <= slices["empty"].mean() <= 0.65


def test_small_bowel_is_many_small_separate_loops(realism: Realism) -> None:
    pieces = realism.slices.loc[realism.slices["small_bowel_pieces"] > 0]
    assert len(pieces) >= 40
    assert pieces["small_bowel_pieces"].median() >= 10
    assert (pieces["small_bowel_pieces"] >= 20).mean() >= 0.15  # often 20 and more
    # Most pieces are under 17 pixels (about 25 mm) across.
    assert pieces["narrow_pieces"].sum() >= 0.5 * pieces["small_bowel_pieces"].sum()


def test_small_bowel_intensities_overlap_their_surroundings(realism: Realism) -> None:
    inside = 0
    for case_day, (small, rest) in realism.pixels.items():
        assert small.size > 1000, case_day
        q1, median, q3 = np.percentile(small, [25, 50, 75])
        r1, r3 = np.percentile(rest, [25, 75])
        assert q1 <= r3 and r1 <= q3, (case_day, (q1, q3), (r1, r3))  # interquartile ranges meet
        inside += r1 <= median <= r3
    # Typically the small bowel's median is an ordinary body intensity, not an outlier.
    assert inside >= 0.75 * len(realism.pixels)


def test_scan_maxima_span_the_real_range_across_case_days(realism: Realism) -> None:
    maxima = realism.slices.groupby("case_day")["maximum"].max()
    assert maxima.max() >= 5 * maxima.min()
    assert maxima.min() <= 2500 and maxima.max() >= 8000
    assert maxima.max() <= 40000  # 16-bit, far from clipping


def test_large_bowel_is_mostly_filled_with_some_rings(realism: Realism) -> None:
    bowel = realism.slices.loc[realism.slices["large_bowel"]]
    rings = (bowel["large_bowel_hole"] > 10).mean()
    assert 0.05 <= rings <= 0.5, rings


def test_stomach_is_in_the_upper_slices_only(realism: Realism) -> None:
    slices = realism.slices
    stomach = slices.loc[slices["stomach"], "height"]
    small = slices.loc[slices["small_bowel_pieces"] > 0, "height"]
    assert len(stomach) > 0
    assert stomach.min() >= 0.4
    assert small.min() < stomach.min() - 0.1  # the bowel reaches far lower


def test_organs_touch_the_image_border_in_the_narrow_scans(realism: Realism) -> None:
    slices = realism.slices
    narrow = slices["size"] == "{}x{}".format(
        GEOMETRIES["234x234"].width, GEOMETRIES["234x234"].height
    )
    assert narrow.any()  # the second training case is always 234 x 234
    assert slices.loc[narrow, "on_border"].sum() >= 3
