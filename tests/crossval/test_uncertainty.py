"""Bootstrap intervals over cases (uwm_d2.crossval.uncertainty); rules scored without a search."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from uwm_d2.core.ids import CLASSES
from uwm_d2.core.merge import MergeRule
from uwm_d2.core.readings import tally_case_day
from uwm_d2.crossval.passes import encode_rule, tally_rules
from uwm_d2.crossval.sources import OofSource
from uwm_d2.crossval.uncertainty import bootstrap, oof_report, tallies_by_case

from .planted import case_day, organ_volume, stray_volume, write_planted


def _tallies(seed: int, count: int, reading: str = "project") -> dict:
    """``{case_day: tally}`` of noisy predictions of random boxes, two days per case."""
    rng = np.random.default_rng(seed)
    tallies = {}
    for index in range(count):
        truth = np.zeros((6, 3, 12, 12), dtype=bool)
        truth[1:5, :, 3:8, 3:8] = True
        pred = truth ^ (rng.random(truth.shape) < rng.uniform(0.0, 0.2))
        pairs = {name: (pred[:, c], truth[:, c]) for c, name in enumerate(CLASSES)}
        tallies[f"case{index // 2 + 1}_day{index % 2}"] = tally_case_day(reading, pairs)
    return tallies


def test_cases_sum_their_case_days() -> None:
    tallies = _tallies(0, 6)
    cases = tallies_by_case(tallies)
    assert sorted(cases) == [1, 2, 3]
    assert cases[2] == tallies["case2_day0"] + tallies["case2_day1"]


def test_the_interval_holds_the_score_and_the_seed_fixes_it() -> None:
    cases = tallies_by_case(_tallies(1, 24))
    result = bootstrap(cases, resamples=200, seed=7)
    assert result["score"] == pytest.approx(sum(cases.values()).summary()["score"])
    assert result["low"] < result["score"] < result["high"]
    for name in CLASSES:
        organ = result["per_class"][name]
        assert organ["low"] <= organ["score"] <= organ["high"]
    assert bootstrap(cases, resamples=200, seed=7) == result
    assert bootstrap(cases, resamples=200, seed=8)["low"] != result["low"]
    assert result["cases"] == 12 and result["resamples"] == 200


def test_identical_cases_give_a_zero_width_interval() -> None:
    one = _tallies(2, 1)["case1_day0"]
    cases = {case: one for case in range(5)}
    result = bootstrap(cases, resamples=50)
    assert result["low"] == pytest.approx(result["score"]) == pytest.approx(result["high"])
    with pytest.raises(ValueError, match="at least one case"):
        bootstrap({})


def test_mlebench_organs_have_no_interval() -> None:
    cases = tallies_by_case(_tallies(3, 8, reading="mlebench"))
    result = bootstrap(cases, resamples=20)
    assert result["low"] is not None
    assert result["per_class"]["stomach"] == {"score": None, "low": None, "high": None}


def test_rules_scored_per_fold_and_written_as_rle(tmp_path: Path) -> None:
    days = {}
    for index in range(4):
        truth, maps = case_day(organ_volume(2, 5), stray_volume(7, 1) if index % 2 else None)
        days[f"case{index + 1}_day0"] = (truth, maps, index % 2)
    oof, labels = write_planted(tmp_path, days)
    rules = {"default": MergeRule(), "cleaned": MergeRule(cleanup_3d=True)}
    tallies = tally_rules([oof], labels, rules)
    assert list(tallies) == [f"case{i}_day0" for i in range(1, 5)]
    report = oof_report(tallies, {day: fold for day, (_, _, fold) in days.items()}, resamples=20)
    assert set(report) == {"default", "cleaned"}
    assert set(report["default"]) == {"project", "competition", "mlebench"}
    assert report["cleaned"]["project"]["all"]["score"] == pytest.approx(1.0)
    assert report["default"]["project"]["folds"]["0"]["score"] == pytest.approx(1.0)
    assert report["default"]["project"]["folds"]["1"]["score"] < 1.0
    summary = report["default"]["competition"]["all"]["summary"]
    assert summary["reading"] == "competition" and summary["num_dice_rows"] == 4 * 10 * 3
    rows = encode_rule(OofSource.open([oof]), MergeRule(cleanup_3d=True), progress=False)
    assert len(rows) == 4 * 10 * 3
    assert rows[("case2_day0_slice_0008", "stomach")] == ""  # the stray is gone
    assert rows[("case2_day0_slice_0003", "stomach")] != ""
