"""Grouped, slice-balanced cross-validation folds: every case lies in exactly one validation fold.

The hidden test set holds cases the model never saw, so validation must never share a case with
training; splitting by row or slice leaks a patient's anatomy across the split and inflates the
score. Folds are balanced by slice count (cases have 80 to 432 slices), not by case count.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from uwm_d2.core.errors import UWMInputError


def assign_folds(
    slice_counts_per_case: Mapping[int, int], num_folds: int = 5, seed: int = 0
) -> dict[int, int]:
    """Assign each case to one of ``num_folds`` folds, balancing the slices per fold.

    Greedy: the cases are shuffled with ``seed`` (so equal counts are ordered at random), sorted by
    slice count, largest first (stable), and each goes to the fold with the fewest slices so far
    (ties: fewest cases, then lowest fold index). The result is deterministic for a seed.

    Args:
        slice_counts_per_case: ``{case: number of slices}`` over all days of the case.
        num_folds: number of folds, at least 2.
        seed: shuffling seed.

    Returns:
        ``{case: fold}`` with folds in ``0 .. num_folds - 1``; every fold gets at least one case.

    Raises:
        UWMInputError: fewer than 2 folds, fewer cases than folds, or a negative slice count.
    """
    if num_folds < 2:
        raise UWMInputError(f"need at least 2 folds, got {num_folds}")
    if len(slice_counts_per_case) < num_folds:
        raise UWMInputError(
            f"cannot split {len(slice_counts_per_case)} case(s) into {num_folds} folds "
            "(every fold needs at least one case)"
        )
    if any(count < 0 for count in slice_counts_per_case.values()):
        raise UWMInputError("slice counts must be >= 0")
    cases = sorted(slice_counts_per_case)  # the input order must not matter
    rng = np.random.default_rng(seed)
    order = [cases[i] for i in rng.permutation(len(cases))]
    order.sort(key=lambda case: -slice_counts_per_case[case])  # stable: ties stay shuffled
    slices = [0] * num_folds
    members = [0] * num_folds
    folds: dict[int, int] = {}
    for case in order:
        fold = min(range(num_folds), key=lambda k: (slices[k], members[k], k))
        folds[case] = fold
        slices[fold] += slice_counts_per_case[case]
        members[fold] += 1
    return dict(sorted(folds.items()))
