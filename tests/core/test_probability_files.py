"""Probability folders (uwm_d2.core.probability_files): round trip and every refusal."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from uwm_d2.core.errors import UWMInputError
from uwm_d2.core.merge import MergeRule
from uwm_d2.core.merge_steps import quantize
from uwm_d2.core.probability_files import (
    ProbabilityFolder,
    ProbabilityWriter,
    config_digest,
)

HASH = config_digest("MODEL:\n  META_ARCHITECTURE: UWMSemanticSegmentor\n")


def ids(case_day: str, count: int, first: int = 1) -> list[str]:
    return [f"{case_day}_slice_{number:04d}" for number in range(first, first + count)]


def maps(depth: int, height: int = 12, width: int = 10, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((depth, 3, height, width)).astype(np.float32)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    writer = ProbabilityWriter(tmp_path / "oof", HASH, tta=True, source={"config": "a.yaml"})
    writer.write("case1_day0", ids("case1_day0", 4), maps(4, seed=1), fold=0)
    writer.write("case2_day3", ids("case2_day3", 3, first=7), maps(3, 9, 11, seed=2), fold=1)
    return tmp_path / "oof"


def test_maps_read_back_on_the_8_bit_grid_with_their_manifest(folder: Path) -> None:
    read = ProbabilityFolder(folder)
    assert read.case_days == ["case1_day0", "case2_day3"]
    assert read.config_hash == HASH and read.tta and read.manifest["source"]["config"] == "a.yaml"
    first, second = list(read)
    assert first.probabilities.dtype == np.uint8
    np.testing.assert_array_equal(first.probabilities, quantize(maps(4, seed=1)))
    assert second.slice_ids == tuple(ids("case2_day3", 3, first=7)) and second.fold == 1
    assert second.probabilities.shape == (3, 3, 9, 11)
    # The same masks from the file as from the float maps it was made of.
    rule = MergeRule(z_smoothing=0.5, min_slices_3d=2)
    np.testing.assert_array_equal(
        rule.volume_masks(first.probabilities), rule.volume_masks(maps(4, seed=1))
    )
    read.check(
        config_hash=HASH,
        tta=True,
        scans={"case1_day0": ids("case1_day0", 4), "case2_day3": ids("case2_day3", 3, 7)},
    )
    read.check_coverage(["case2_day3", "case1_day0"], folds={"case1_day0": 0, "case2_day3": 1})


def test_a_rerun_continues_the_folder_and_skips_what_is_written(folder: Path) -> None:
    writer = ProbabilityWriter(folder, HASH, tta=True)
    assert writer.written == {"case1_day0", "case2_day3"}
    writer.write("case3_day1", ids("case3_day1", 2), maps(2), fold=2)
    assert ProbabilityFolder(folder).case_days == ["case1_day0", "case2_day3", "case3_day1"]


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda f: ProbabilityWriter(f, "other", tta=True), "made by another config"),
        (lambda f: ProbabilityWriter(f, HASH, tta=False), "made with flip TTA"),
        (lambda f: ProbabilityFolder(f).check(config_hash="other"), "another config"),
        (
            lambda f: ProbabilityFolder(f).check(
                scans={"case1_day0": ids("case1_day0", 4), "case2_day3": ids("case2_day3", 4)}
            ),
            "other scans of case2_day3",
        ),
        (
            lambda f: ProbabilityFolder(f).check(scans={"case1_day0": ids("case1_day0", 4)}),
            "holds case2_day3, which is not among the scans",
        ),
        (lambda f: ProbabilityFolder(f).check_coverage(["case1_day0"]), "not asked for: case2"),
        (
            lambda f: ProbabilityFolder(f).check_coverage(
                ["case1_day0", "case2_day3", "case5_day5"]
            ),
            "lacks case5_day5",
        ),
        (
            lambda f: ProbabilityFolder(f).check_coverage(["case1_day0", "case1_day0"]),
            "case1_day0 is listed twice",
        ),
        (
            lambda f: ProbabilityFolder(f).check_coverage(
                ["case1_day0", "case2_day3"], folds={"case1_day0": 1}
            ),
            "predicted by fold 0, not fold 1",
        ),
        (
            lambda f: ProbabilityWriter(f, HASH, tta=True).write(
                "case1_day0", ids("case1_day0", 4), maps(4), fold=1
            ),
            r"already holds case1_day0 \(fold 0\)",
        ),
        (
            lambda f: ProbabilityWriter(f, HASH, tta=True).write(
                "case4_day0", ids("case9_day0", 2), maps(2)
            ),
            "not a slice of case4_day0",
        ),
        (
            lambda f: ProbabilityWriter(f, HASH, tta=True).write(
                "case4_day0", ids("case4_day0", 3), maps(2)
            ),
            r"expected \(3, 3, H, W\)",
        ),
        (lambda f: ProbabilityFolder(f).read("case8_day0"), "holds no probabilities of case8"),
        (lambda f: ProbabilityFolder(f.parent), "not a probability folder"),
    ],
    ids=[
        "config", "tta", "check-config", "other-scans", "unknown-scan", "extra", "missing",
        "twice-listed", "fold", "twice-written", "foreign-slice", "shape", "absent", "no-manifest",
    ],
)  # fmt: skip
def test_refusals_are_one_line(folder: Path, make, match: str) -> None:
    with pytest.raises(UWMInputError, match=match) as caught:
        make(folder)
    assert "\n" not in str(caught.value)


def test_a_file_that_disagrees_with_the_manifest_is_refused(folder: Path) -> None:
    other = ProbabilityWriter(folder.parent / "other", HASH, tta=True)
    other.write("case1_day0", ids("case1_day0", 5), maps(5))
    (folder / "case1_day0.npz").write_bytes((folder.parent / "other/case1_day0.npz").read_bytes())
    with pytest.raises(UWMInputError, match="manifest says uint8"):
        ProbabilityFolder(folder).read("case1_day0")
    (folder / "case2_day3.npz").write_text("not a zip")
    with pytest.raises(UWMInputError, match="cannot be read"):
        ProbabilityFolder(folder).read("case2_day3")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["version"] = 99
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UWMInputError, match="version 99"):
        ProbabilityFolder(folder)


def test_test_scans_have_no_fold(tmp_path: Path) -> None:
    writer = ProbabilityWriter(tmp_path / "test", HASH, tta=False)
    writer.write("case7_day1", ids("case7_day1", 2), quantize(maps(2)))
    read = ProbabilityFolder(tmp_path / "test")
    assert read.fold_of("case7_day1") is None and not read.tta
    assert not any(path.name.startswith(".") for path in (tmp_path / "test").iterdir())
