"""Ensembles of cross-validations: member weights and one merge rule on their averaged maps.

Given the out-of-fold folders of several cross-validations of the same case-days (say a semantic
and a Mask R-CNN run), :func:`search_members` tries the weight vectors of a small grid over the
simplex (:func:`simplex_grid`; a member may get weight 0, so every member alone is tried too).
In one streamed pass each case-day's members are read once and every weighted average is scored
with the default rule and with each class's cut-stage candidates (smoothing x cut of
:class:`~uwm_d2.crossval.search.SearchGrid`; for ``mlebench``, the default rule only). The
weights whose best cut scores highest are kept, and the whole rule is then chosen on their
average by :func:`~uwm_d2.crossval.search.search_rule` (with its cross-validated estimate of the
rule; the choice of weights is not cross-validated).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from uwm_d2.core.ids import CLASSES
from uwm_d2.core.merge import MergeRule
from uwm_d2.core.progress import Progress, parallel_map
from uwm_d2.core.readings import READINGS, ReadingTally, resolve_readings
from uwm_d2.crossval.candidates import CaseDayJob, CaseDayResult, evaluate_maps
from uwm_d2.crossval.passes import CaseDayPasses, joint_rule
from uwm_d2.crossval.search import SearchGrid, SearchResult, search_rule
from uwm_d2.crossval.sources import OofSource
from uwm_d2.crossval.truth import TruthTable, truth_volume


def simplex_grid(members: int, step: float = 0.25) -> list[tuple[float, ...]]:
    """Every weight vector of ``members`` multiples of ``step`` that sum to 1.

    Raises:
        ValueError: fewer than one member, or a step that does not divide 1.
    """
    parts = round(1 / step)
    if members < 1 or not step > 0 or abs(parts * step - 1) > 1e-9:
        raise ValueError(f"need members >= 1 and a step dividing 1, got {members}, {step}")
    vectors = [
        tuple(count / parts for count in counts)
        for counts in itertools.product(range(parts + 1), repeat=members)
        if sum(counts) == parts
    ]
    return sorted(vectors, reverse=True)


@dataclass(frozen=True)
class _WeightsJob:
    job: CaseDayJob  # its source lists every member with equal weights
    vectors: tuple[tuple[float, ...], ...]


def _score_weights(job: _WeightsJob) -> list[CaseDayResult]:
    """One case-day: each member read once, each weighted average scored (a worker)."""
    source, case_day = job.job.source, job.job.case_day
    members = [source.folder(index).read(case_day) for index in range(len(source.folders))]
    shape = members[0].probabilities.shape[2:]
    truth = truth_volume(job.job.truth_rows, shape, job.job.csv_name)
    results = []
    for vector in job.vectors:
        total = np.zeros(members[0].probabilities.shape, dtype=np.float32)
        for member, weight in zip(members, vector, strict=True):
            if weight > 0:
                total += member.probabilities.astype(np.float32) * np.float32(weight)
        results.append(evaluate_maps(job.job, np.rint(total).astype(np.uint8), truth))
    return results


@dataclass
class MembersResult:
    """What :func:`search_members` found: ``weights`` (one per folder), each vector's scores
    (``{"weights", "default", "cut"}``: the default rule, and the best cut per class), and the
    rule search on the chosen average."""

    weights: tuple[float, ...]
    candidates: list[dict[str, Any]]
    search: SearchResult


def search_members(
    folders: Sequence[str | os.PathLike],
    labels: str | os.PathLike,
    default: MergeRule,
    reading: str = "project",
    step: float = 0.25,
    grid: SearchGrid | None = None,
    workers: int = 1,
) -> MembersResult:
    """Choose member weights, then the merge rule on their average (see the module docstring).

    Raises:
        UWMInputError: folders that do not agree (:meth:`OofSource.open`), slices without truth.
        ValueError: an unknown reading, a bad step.
    """
    (chosen_reading,) = resolve_readings(reading)
    grid = grid or SearchGrid()
    vectors = tuple(simplex_grid(len(folders), step))
    equal = OofSource.open(folders)
    passes = CaseDayPasses(equal, TruthTable(labels), chosen_reading.name, workers)
    separable = READINGS[chosen_reading.name].hausdorff_per_class
    starts = [default.class_rule(c) for c in range(len(CLASSES))]
    cut_stage = SearchGrid.STAGES[0][1]
    class_items = (
        tuple(
            (c, rule)
            for c, start in enumerate(starts)
            for rule in grid.candidates(start, cut_stage, 0)
        )
        if separable
        else ()
    )
    jobs = [
        _WeightsJob(
            CaseDayJob(
                equal,
                case_day,
                rows,
                passes.truth.csv_name,
                chosen_reading.name,
                class_items + tuple((c, s) for c, s in enumerate(starts)),
                () if separable else (joint_rule(default),),
            ),
            vectors,
        )
        for case_day, rows in passes.rows.items()
    ]
    with Progress(passes.num_slices, "member weights", group_unit="case-day") as progress:
        per_day = parallel_map(
            _score_weights, jobs, workers, progress, lambda job: len(job.job.truth_rows)
        )
    candidates = [
        _vector_scores(vector, [day[index] for day in per_day], starts, class_items, separable)
        for index, vector in enumerate(vectors)
    ]
    best = max(candidates, key=lambda item: item["cut"])  # the first of equal scores
    weights = tuple(best["weights"])
    search = search_rule(
        OofSource.open(folders, weights), labels, default, chosen_reading.name, grid, workers
    )
    return MembersResult(weights, candidates, search)


def _vector_scores(vector, results: list[CaseDayResult], starts, class_items, separable) -> dict:
    """The default rule's score of one weight vector, and with each class's best cut."""
    if not separable:
        total = sum(next(iter(result.joint_tallies.values())) for result in results)
        score = _value(total.summary()["score"])
        return {"weights": list(vector), "default": score, "cut": score}
    sums: dict[Any, ReadingTally] = {}
    for result in results:
        for item, tally in result.class_tallies.items():
            sums[item] = sums[item] + tally if item in sums else tally

    def class_score(item) -> float:
        name = CLASSES[item[0]]
        return _value(sums[item].summary()["per_class"][name]["score"])

    default = np.mean([class_score((c, start)) for c, start in enumerate(starts)])
    best = np.mean(
        [
            max(class_score(item) for item in [(c, start), *[i for i in class_items if i[0] == c]])
            for c, start in enumerate(starts)
        ]
    )
    return {"weights": list(vector), "default": float(default), "cut": float(best)}


def _value(score: float | None) -> float:
    return -np.inf if score is None else float(score)
