"""Member weights of an ensemble of cross-validations (uwm_d2.crossval.members)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from uwm_d2.core.merge import MergeRule
from uwm_d2.crossval.members import search_members, simplex_grid
from uwm_d2.crossval.search import SearchGrid

from .planted import case_day, organ_volume, stray_volume, write_planted

CUTS_ONLY = SearchGrid(
    z_smoothing=(0.0,),
    mask_threshold=(0.4, 0.5, 0.6, 0.7),
    slice_min_pixels=(0,),
    slice_min_peak=(0.0,),
    min_component_2d=(0,),
    min_slices_3d=(1,),
    keep_largest_3d=(False,),
    rounds=1,
)


def test_the_simplex_grid_sums_to_one() -> None:
    assert simplex_grid(2, 0.25) == [(1.0, 0.0), (0.75, 0.25), (0.5, 0.5), (0.25, 0.75), (0.0, 1.0)]
    three = simplex_grid(3, 0.5)
    assert len(three) == 6 and all(sum(v) == pytest.approx(1.0) for v in three)
    with pytest.raises(ValueError, match="step dividing 1"):
        simplex_grid(2, 0.3)


def test_members_that_fail_differently_are_averaged(tmp_path: Path) -> None:
    """Member a sees the organs (0.9) and strays (0.75); member b misses one slice of each organ.
    Alone, no cut is perfect; averaged, a cut between the stray and the missed slice is."""
    first, second = {}, {}
    for index in range(4):
        organ = organ_volume(2, 5)
        truth, maps = case_day(organ, None)
        strays = stray_volume(index, 2)
        maps_a = np.where(organ[:, None], 0.9, np.where(strays[:, None], 0.75, 0.0))
        maps_a = np.repeat(maps_a, 3, axis=1)
        maps_b = maps.copy()
        maps_b[4] = 0.0  # a slice the organ covers
        first[f"case{index + 1}_day0"] = (truth, maps_a.astype(np.float32), index % 2)
        second[f"case{index + 1}_day0"] = (truth, maps_b, index % 2)
    a, labels = write_planted(tmp_path, first, name="a")
    b, _ = write_planted(tmp_path, second, name="b")
    result = search_members([a, b], labels, MergeRule(), step=0.25, grid=CUTS_ONLY)
    scores = {tuple(item["weights"]): item for item in result.candidates}
    assert scores[(1.0, 0.0)]["cut"] < 1.0 and scores[(0.0, 1.0)]["cut"] < 1.0
    assert result.weights not in ((1.0, 0.0), (0.0, 1.0))
    assert scores[result.weights]["cut"] == pytest.approx(1.0)
    assert result.search.summary("chosen")["score"] == pytest.approx(1.0)
    assert result.search.summary("default")["score"] == pytest.approx(
        scores[result.weights]["default"]
    )
