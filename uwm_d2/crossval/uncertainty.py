"""Scores of an out-of-fold set with 95% intervals: a bootstrap over cases, per fold and overall.

Everything is computed from per-case-day tallies (:class:`uwm_d2.core.readings.ReadingTally`,
e.g. :attr:`uwm_d2.crossval.search.SearchResult.tallies` or
:func:`uwm_d2.crossval.passes.tally_rules`), summed per case: a resample of cases is the sum of
their tallies (a case drawn twice counts twice), so no volume is scored again. Cases, not
case-days, are resampled because the case-days of one patient are not independent (and the
folds are grouped by case).

The interval is the percentile bootstrap: :data:`RESAMPLES` resamples of the cases with
replacement (numpy's ``default_rng(seed)``, seed 0 unless given), the 2.5th and 97.5th
percentiles of the resampled scores.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from uwm_d2.core.ids import parse_case_day
from uwm_d2.core.readings import READINGS, ReadingTally

#: Bootstrap resamples of the cases.
RESAMPLES = 1000
#: Coverage of the interval.
CONFIDENCE = 0.95


def tallies_by_case(tallies: Mapping[str, ReadingTally]) -> dict[int, ReadingTally]:
    """``{case_day: tally}`` summed per case: ``{case: tally}``."""
    cases: dict[int, ReadingTally] = {}
    for case_day, tally in tallies.items():
        case = parse_case_day(case_day)[0]
        cases[case] = cases[case] + tally if case in cases else tally
    return cases


def _scores(summary: Mapping[str, Any]) -> dict[str, float | None]:
    """``{"score": ..., "<class>": ...}`` of one summary (``None`` where undefined)."""
    scores = {"score": summary["score"]}
    scores.update({name: values["score"] for name, values in summary["per_class"].items()})
    return scores


def bootstrap(
    case_tallies: Mapping[Any, ReadingTally],
    resamples: int = RESAMPLES,
    seed: int = 0,
    confidence: float = CONFIDENCE,
) -> dict[str, Any]:
    """The score of these cases and its interval, overall and per organ.

    Args:
        case_tallies: ``{case: tally}`` (:func:`tallies_by_case`), one reading.
        resamples: bootstrap resamples.
        seed: the generator's seed (the same seed, the same interval).
        confidence: the interval's coverage.

    Returns:
        ``{"score": s, "low": l, "high": h, "per_class": {organ: {"score", "low", "high"}},
        "cases": n, "resamples": resamples, "seed": seed}``; ``None`` where a score is
        undefined (MLE-bench's per-organ scores, a reading with nothing to average).

    Raises:
        ValueError: no cases, or ``resamples < 1``.
    """
    if not case_tallies or resamples < 1:
        raise ValueError("bootstrap needs at least one case and one resample")
    tallies = list(case_tallies.values())
    point = _scores(sum(tallies).summary())
    rng = np.random.default_rng(seed)
    drawn: dict[str, list[float]] = {key: [] for key in point}
    for _ in range(resamples):
        counts = np.bincount(rng.integers(0, len(tallies), len(tallies)), minlength=len(tallies))
        sample = sum(tallies[i] for i in np.flatnonzero(counts) for _ in range(counts[i]))
        for key, value in _scores(sample.summary()).items():
            if key in drawn and value is not None:
                drawn[key].append(value)
    tail = 100 * (1 - confidence) / 2

    def interval(key: str) -> dict[str, float | None]:
        values = drawn[key]
        if point[key] is None or not values:
            return {"score": point[key], "low": None, "high": None}
        low, high = np.percentile(values, [tail, 100 - tail])
        return {"score": point[key], "low": float(low), "high": float(high)}

    result: dict[str, Any] = interval("score")
    result["per_class"] = {key: interval(key) for key in point if key != "score"}
    result.update(cases=len(tallies), resamples=resamples, seed=seed)
    return result


def oof_report(
    tallies: Mapping[str, Mapping[str, Mapping[str, ReadingTally]]],
    folds: Mapping[str, Any],
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> dict[str, Any]:
    """Every rule's score under every reading, overall and per fold, with intervals.

    Args:
        tallies: ``{case_day: {label: {reading: tally}}}`` (a search's, or
            :func:`~uwm_d2.crossval.passes.tally_rules`').
        folds: the fold of each case-day.

    Returns:
        ``{label: {reading: {"all": bootstrap(...) + "summary", "folds": {fold: bootstrap(...)}}}}``
        where ``summary`` is the reading's full summary of the whole set.
    """
    first = next(iter(tallies.values()))
    report: dict[str, Any] = {}
    for label, by_reading in first.items():
        report[label] = {}
        for reading in (name for name in READINGS if name in by_reading):
            per_day = {day: rules[label][reading] for day, rules in tallies.items()}
            overall = bootstrap(tallies_by_case(per_day), resamples, seed)
            overall["summary"] = sum(per_day.values()).summary()
            per_fold = {}
            for fold in sorted({folds[day] for day in per_day}, key=str):
                in_fold = {day: t for day, t in per_day.items() if folds[day] == fold}
                per_fold[str(fold)] = bootstrap(tallies_by_case(in_fold), resamples, seed)
            report[label][reading] = {"all": overall, "folds": per_fold}
    return report
