"""The ensemble file's ``merge:`` section carries every setting of the merge rule (no torch)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from uwm_d2.core.errors import UWMInputError
from uwm_d2.core.merge import MergeRule, merge_section
from uwm_d2.inference.ensemble import override_rule, read_ensemble

MEMBERS = "members:\n  - {config: a.yaml, weights: x.pth}\n"


def test_a_tuned_rule_written_to_an_ensemble_file_reads_back_equal(tmp_path: Path) -> None:
    tuned = MergeRule(
        mask_threshold=(0.4, 0.5, 0.45),
        z_smoothing=0.5,
        slice_min_pixels=(0, 12, 0),
        min_component_2d=(25, 0, 0),
        min_slices_3d=(3, 2, 1),
        keep_largest_3d=(False, False, True),
    )
    path = tmp_path / "ensemble.yaml"
    path.write_text(MEMBERS + yaml.safe_dump({"merge": merge_section(tuned)}))
    _, merge = read_ensemble(path)
    assert override_rule(MergeRule(cleanup_3d=True, z_smoothing=1.0), merge) == tuned


def test_per_class_merge_keys_take_one_value_or_a_list(tmp_path: Path) -> None:
    path = tmp_path / "ensemble.yaml"
    path.write_text(MEMBERS + "merge:\n  MASK_THRESHOLD: [0.4, 0.5, 0.6]\n  MIN_SLICES_3D: 3\n")
    rule = override_rule(MergeRule(), read_ensemble(path)[1])
    assert rule.mask_threshold == (0.4, 0.5, 0.6) and rule.min_slices_3d == 3


@pytest.mark.parametrize(
    ("merge", "match"),
    [
        ("Z_SMOOTHING: [0.5, 0.5]", r"merge settings: Z_SMOOTHING needs 1 value or 3"),
        ("KEEP_LARGEST_3D: maybe", r"merge settings: KEEP_LARGEST_3D must be true or false"),
        ("MIN_SLICES_3D: 0", r"merge settings: MIN_SLICES_3D must be an integer >= 1"),
    ],
)
def test_a_bad_merge_value_names_its_key(tmp_path: Path, merge: str, match: str) -> None:
    path = tmp_path / "ensemble.yaml"
    path.write_text(MEMBERS + f"merge:\n  {merge}\n")
    with pytest.raises(UWMInputError, match=match) as caught:
        override_rule(MergeRule(), read_ensemble(path)[1])
    assert "\n" not in str(caught.value)
