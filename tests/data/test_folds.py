"""Grouped, balanced folds: a case is in exactly one validation fold and never on both sides."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from uwm_d2.core.errors import UWMInputError
from uwm_d2.data.coco import build_coco
from uwm_d2.data.folds import assign_folds


def _counts(num_cases: int, seed: int = 1) -> dict[int, int]:
    rng = np.random.default_rng(seed)
    # Like the real data: 1 to 5 days of 80 or 144 slices per case.
    return {
        int(case): int(rng.integers(1, 6) * rng.choice([80, 144]))
        for case in rng.choice(np.arange(1, 200), num_cases, replace=False)
    }


def test_every_case_is_in_exactly_one_fold_and_every_fold_is_used() -> None:
    counts = _counts(85)
    folds = assign_folds(counts, num_folds=5, seed=0)
    assert set(folds) == set(counts)
    assert set(folds.values()) == set(range(5))


def test_folds_are_balanced_by_slices() -> None:
    counts = _counts(85)
    folds = assign_folds(counts, num_folds=5, seed=0)
    totals = np.bincount(list(folds.values()), weights=[counts[c] for c in folds], minlength=5)
    # Greedy largest-first keeps the spread within the smallest case, far below one big case.
    assert totals.max() - totals.min() <= min(counts.values())
    assert totals.max() / totals.min() < 1.05


def test_folds_are_deterministic_and_ignore_input_order() -> None:
    counts = _counts(30)
    reordered = dict(reversed(list(counts.items())))
    assert assign_folds(counts, 5, seed=7) == assign_folds(reordered, 5, seed=7)
    seeds = {tuple(assign_folds(counts, 5, seed=s).items()) for s in range(5)}
    assert len(seeds) > 1  # the seed breaks ties differently


@pytest.mark.parametrize(("num_cases", "num_folds"), [(3, 5), (5, 1), (5, 0)])
def test_too_few_cases_or_folds_is_an_input_error(num_cases: int, num_folds: int) -> None:
    with pytest.raises(UWMInputError, match="fold"):
        assign_folds(_counts(num_cases), num_folds=num_folds)


def test_coco_folds_never_share_a_case(phantom_root: Path) -> None:
    build = build_coco(phantom_root, num_folds=3, workers=1, progress=False)
    all_ids = {image["id"] for image in build.all["images"]}
    validated: list[int] = []
    for fold in range(3):
        train, val = build.split(fold, "train"), build.split(fold, "val")
        train_cases = {image["case"] for image in train["images"]}
        val_cases = {image["case"] for image in val["images"]}
        assert val_cases and not train_cases & val_cases
        train_ids = {image["id"] for image in train["images"]}
        val_ids = [image["id"] for image in val["images"]]
        assert train_ids | set(val_ids) == all_ids and not train_ids & set(val_ids)
        validated += val_ids
    assert sorted(validated) == sorted(all_ids)  # every slice validated exactly once
