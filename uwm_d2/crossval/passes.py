"""Passes over the case-days of a probability source: score rules, or write a rule's masks as RLE.

:class:`CaseDayPasses` reads the truth rows of every case-day once, then each pass sends one job
per case-day to the process pool (:func:`uwm_d2.core.progress.parallel_map`, progress shown) and
gets small tallies back; no pass holds more than one case-day per worker.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from uwm_d2.core.ids import CLASSES, parse_case_day
from uwm_d2.core.merge import MergeRule
from uwm_d2.core.progress import Progress, parallel_map
from uwm_d2.core.readings import DEFAULT_READING, READINGS, ReadingTally
from uwm_d2.core.rle import rle_encode
from uwm_d2.crossval.candidates import CaseDayJob, CaseDayResult, JointRule, evaluate_case_day
from uwm_d2.crossval.sources import OofSource
from uwm_d2.crossval.truth import TruthRow, TruthTable

#: ``{label: a rule, or a rule per fold}``: what :func:`tally_rules` scores.
RuleSet = Mapping[str, MergeRule | Mapping[Any, MergeRule]]


def joint_rule(rule: MergeRule) -> JointRule:
    """A rule's per-class settings, one :class:`ClassRule` per class."""
    return tuple(rule.class_rule(c) for c in range(len(CLASSES)))


class CaseDayPasses:
    """Passes over every case-day of ``source`` against the truth of ``truth``.

    Raises:
        UWMInputError: a slice of the source without truth rows.
    """

    def __init__(
        self, source: OofSource, truth: TruthTable, reading: str = DEFAULT_READING, workers: int = 1
    ) -> None:
        self.source, self.truth, self.reading, self.workers = source, truth, reading, workers
        self.rows: dict[str, tuple[TruthRow, ...]] = {}
        for case_day in source.case_days:
            self.rows[case_day] = tuple(truth.rows(case_day, source.slice_ids(case_day)))
        self.num_slices = sum(len(rows) for rows in self.rows.values())

    def run(
        self,
        desc: str,
        class_items: Iterable = (),
        joint_items: Iterable[JointRule] = (),
        readings: Sequence[str] = (),
    ) -> list[CaseDayResult]:
        """One pass: every case-day's tallies of these items (see :class:`CaseDayJob`)."""
        class_items, joint_items = tuple(class_items), tuple(joint_items)
        jobs = [
            CaseDayJob(
                self.source,
                case_day,
                rows,
                self.truth.csv_name,
                self.reading,
                class_items,
                joint_items,
                tuple(readings),
            )
            for case_day, rows in self.rows.items()
        ]
        with Progress(self.num_slices, desc, group_unit="case-day") as progress:
            return parallel_map(
                evaluate_case_day, jobs, self.workers, progress, lambda job: len(job.truth_rows)
            )

    def per_fold(self, results: list[CaseDayResult], joint: bool) -> dict:
        """``{fold: {item: tally}}`` summed over each fold's case-days."""
        sums: dict[Any, dict[Any, ReadingTally]] = {}
        for result in results:
            fold = self.source.fold_of(result.case_day)
            items = result.joint_tallies if joint else result.class_tallies
            target = sums.setdefault(fold, {})
            for item, tally in items.items():
                key = item[1] if joint else item
                target[key] = target[key] + tally if key in target else tally
        return sums

    def tally_rules(self, rules: RuleSet, desc: str = "score rules") -> dict:
        """Every case-day's tally of every rule under every reading.

        Args:
            rules: ``{label: rule}``; a label may map each fold to its own rule instead (the
                cross-validated rule), a case-day taking its fold's.

        Returns:
            ``{case_day: {label: {reading: ReadingTally}}}``, case-days in case, day order.
        """

        def rule_of(label: str, case_day: str) -> MergeRule:
            rule = rules[label]
            return rule if isinstance(rule, MergeRule) else rule[self.source.fold_of(case_day)]

        items: dict[JointRule, None] = {}
        for case_day in self.rows:
            items.update(dict.fromkeys(joint_rule(rule_of(label, case_day)) for label in rules))
        readings = tuple(READINGS)
        results = self.run(desc, joint_items=items, readings=readings)
        tallies = {}
        for result in sorted(results, key=lambda r: parse_case_day(r.case_day)):
            tallies[result.case_day] = {
                label: {
                    reading: result.joint_tallies[
                        (reading, joint_rule(rule_of(label, result.case_day)))
                    ]
                    for reading in readings
                }
                for label in rules
            }
        return tallies


def tally_rules(
    folders: Sequence[str | os.PathLike] | OofSource,
    labels: str | os.PathLike,
    rules: RuleSet,
    workers: int = 1,
) -> dict[str, dict[str, dict[str, ReadingTally]]]:
    """Score rules on out-of-fold maps under every reading, per case-day (no search).

    Args:
        folders: probability folders (equal weights) or an :class:`OofSource`.
        labels: the data root (its ``train.csv``) or a label CSV.
        rules: see :meth:`CaseDayPasses.tally_rules`.

    Returns:
        ``{case_day: {label: {reading: ReadingTally}}}``.
    """
    source = folders if isinstance(folders, OofSource) else OofSource.open(folders)
    return CaseDayPasses(source, TruthTable(labels), workers=workers).tally_rules(rules)


def _encode_case_day(job: tuple[OofSource, str, MergeRule]) -> list[tuple[str, str, str]]:
    source, case_day, rule = job
    slice_ids, maps = source.read(case_day)
    masks = rule.volume_masks(maps)
    return [
        (slice_id, name, rle_encode(masks[depth, class_index]))
        for depth, slice_id in enumerate(slice_ids)
        for class_index, name in enumerate(CLASSES)
    ]


def encode_rule(
    source: OofSource, rule: MergeRule, workers: int = 1, progress: bool = True
) -> dict[tuple[str, str], str]:
    """``{(slice_id, class): rle}`` of the rule's masks on every case-day of ``source``: the
    rows of an out-of-fold submission file (``uwm_d2.inference.submission.build_submission``)."""
    jobs = [(source, case_day, rule) for case_day in source.case_days]
    with Progress(len(jobs), "encode", unit="case-day", enabled=progress) as bar:
        parts = parallel_map(_encode_case_day, jobs, workers, bar)
    return {(slice_id, name): rle for part in parts for slice_id, name, rle in part}
