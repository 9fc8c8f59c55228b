"""Choose the merge rule on out-of-fold probabilities, per class, and say how much of it is real.

:func:`search_rule` streams the case-days of a probability source (one at a time, in a process
pool), scores many candidate rules on each while it is loaded (:mod:`uwm_d2.crossval.candidates`)
and keeps only additive tallies per fold and candidate. The search is staged coordinate descent
from the config's rule, over the steps of :mod:`uwm_d2.core.merge_steps`:

1. ``cut``: z-smoothing weight x probability cut;
2. ``gate``: slice presence gate, pixels x peak;
3. ``components_2d``: smallest 2D component;
4. ``components_3d``: smallest 3D span x keep-the-largest.

Each stage tries the grid of :class:`SearchGrid` for its settings (plus the current values),
the others held at their current values, and keeps the best; a second round repeats the stages,
its cut stage trying only the cuts 0.025 either side of the current one (at the current
smoothing), and skipping any other stage when nothing changed since it last ran. For the
``project`` and ``competition`` readings a class's score depends on that class's settings only
(every class has as many Dice rows and Hausdorff volumes), so each class is chosen on its own
score in the same pass. ``mlebench`` ORs the classes in its Hausdorff term: there each stage is
run once per class, on the overall score. A candidate replaces the current settings only when it
scores higher, so the chosen rule never scores below the config's on the reading searched.

The cross-validated estimate: with folds, the same search is also run on every fold's
complement (in the same passes); the rule chosen without fold ``k`` is applied to fold ``k``'s
case-days, and those tallies, summed over the folds, are the estimate of the chosen rule's score
on cases it was not chosen on.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from uwm_d2.core.ids import CLASSES
from uwm_d2.core.merge import PER_CLASS_SETTINGS, MergeRule
from uwm_d2.core.merge_steps import ClassRule
from uwm_d2.core.readings import READINGS, ReadingTally, resolve_readings
from uwm_d2.crossval.candidates import JointRule
from uwm_d2.crossval.passes import CaseDayPasses
from uwm_d2.crossval.sources import OofSource
from uwm_d2.crossval.truth import TruthTable

#: A candidate must beat the current settings by more than this (float sums in another order
#: must not swap equal rules).
_MARGIN = 1e-12


@dataclass(frozen=True)
class SearchGrid:
    """The values each stage tries, for every class (the current value is always tried too)."""

    z_smoothing: tuple[float, ...] = (0.0, 0.5, 1.0)
    mask_threshold: tuple[float, ...] = (0.3, 0.4, 0.5, 0.6, 0.7)
    slice_min_pixels: tuple[int, ...] = (0, 10, 30)
    slice_min_peak: tuple[float, ...] = (0.0, 0.8)
    min_component_2d: tuple[int, ...] = (0, 10, 30, 60)
    min_slices_3d: tuple[int, ...] = (1, 2, 3, 5)
    keep_largest_3d: tuple[bool, ...] = (False, True)
    rounds: int = 2
    refine_step: float = 0.025

    def __post_init__(self) -> None:
        for name in PER_CLASS_SETTINGS:
            for value in getattr(self, name):
                MergeRule(**{name: value})  # refuses a value the rule would refuse, named
        if self.rounds < 1 or not self.refine_step > 0:
            raise ValueError(
                f"need rounds >= 1 and refine_step > 0, got {self.rounds}, {self.refine_step}"
            )

    #: The stages in order and the settings each one searches.
    STAGES = (
        ("cut", ("z_smoothing", "mask_threshold")),
        ("gate", ("slice_min_pixels", "slice_min_peak")),
        ("components_2d", ("min_component_2d",)),
        ("components_3d", ("min_slices_3d", "keep_largest_3d")),
    )

    def candidates(self, current: ClassRule, settings: Sequence[str], round_: int) -> list:
        """Every combination of the stage's values with the others at ``current``'s."""
        values: list[list[Any]] = []
        for name in settings:
            options = list(getattr(self, name))
            if name == "mask_threshold" and round_ > 0:
                # A later round refines the cut around the current one at the current smoothing.
                here = current.mask_threshold
                options = [round(here + d, 6) for d in (-self.refine_step, self.refine_step)]
            elif name == "z_smoothing" and round_ > 0:
                options = []
            options = [v for v in options if _valid(name, v)] + [getattr(current, name)]
            values.append(list(dict.fromkeys(options)))
        combos = [[]]
        for options in values:
            combos = [[*combo, value] for combo in combos for value in options]
        return [replace(current, **dict(zip(settings, c, strict=True))) for c in combos]


def _valid(name: str, value: Any) -> bool:
    return not (name == "mask_threshold" and not 0 < value <= 1)


@dataclass
class _Search:
    """One search: the folds it chooses on and its current settings per class."""

    folds: frozenset
    rules: list[ClassRule]
    history: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class SearchResult:
    """What :func:`search_rule` found.

    Attributes:
        reading: the reading searched.
        default: the config's rule.
        chosen: the rule chosen on every case-day.
        fold_rules: per fold ``k``, the rule chosen without fold ``k``'s case-days.
        folds: the fold of each case-day (``None`` where the source has none).
        tallies: per case-day, ``{"default" | "chosen" | "cross_validated": {reading: tally}}``
            under every reading (``cross_validated``: the rule chosen without the case-day's
            fold; the chosen rule where there are no folds).
        history: each stage's choice (search ``"all"`` and ``"without fold k"``).
    """

    reading: str
    default: MergeRule
    chosen: MergeRule
    fold_rules: dict[int, MergeRule]
    folds: dict[str, int | None]
    tallies: dict[str, dict[str, dict[str, ReadingTally]]]
    history: list[dict[str, Any]]

    def summary(self, rule: str = "chosen", reading: str | None = None) -> dict[str, Any]:
        """The summary (:meth:`ReadingTally.summary`) of one rule over every case-day."""
        reading = reading or self.reading
        return sum(t[rule][reading] for t in self.tallies.values()).summary()


def merge_rule_of(base: MergeRule, class_rules: Sequence[ClassRule]) -> MergeRule:
    """``base`` (instance settings kept) with these per-class settings, ``cleanup_3d`` folded."""
    values = {name: tuple(getattr(r, name) for r in class_rules) for name in PER_CLASS_SETTINGS}
    return replace(base, cleanup_3d=False, **values)


def _score(tally: ReadingTally, class_index: int | None) -> float:
    summary = tally.summary()
    if class_index is not None:
        summary = summary["per_class"].get(CLASSES[class_index], {"score": None})
    return -math.inf if summary["score"] is None else float(summary["score"])


def _best(search: _Search, sums: dict, items: list, class_index: int | None, current) -> Any:
    """The item with the highest score over the search's folds (``current`` on ties)."""

    def score(item) -> float:
        return _score(sum(sums[fold][item] for fold in search.folds), class_index)

    best, best_score = current, score(current)
    for item in items:
        value = score(item)
        if value > best_score + _MARGIN:
            best, best_score = item, value
    return best, best_score


def search_rule(
    folders: Sequence[str] | OofSource,
    labels: str,
    default: MergeRule,
    reading: str = "project",
    grid: SearchGrid | None = None,
    workers: int = 1,
) -> SearchResult:
    """Choose the merge rule on out-of-fold probabilities (see the module docstring).

    Args:
        folders: probability folders of the same case-days (averaged with equal weights), or a
            :class:`~uwm_d2.crossval.sources.OofSource` (member weights).
        labels: the data root (its ``train.csv``) or a label CSV.
        default: the config's rule: the start, and the "before" of the report.
        reading: the reading to optimise (``project``, ``competition``, ``mlebench``).
        grid: the values tried (:class:`SearchGrid` defaults).
        workers: processes for the passes over the case-days.

    Raises:
        UWMInputError: unreadable or inconsistent folders, slices without truth rows.
        ValueError: an unknown reading.
    """
    (chosen_reading,) = resolve_readings(reading)
    reading = chosen_reading.name
    grid = grid or SearchGrid()
    source = folders if isinstance(folders, OofSource) else OofSource.open(folders)
    passes = CaseDayPasses(source, TruthTable(labels), reading, workers)
    folds = {case_day: source.fold_of(case_day) for case_day in source.case_days}
    all_folds = frozenset(folds.values())
    start = [default.class_rule(c) for c in range(len(CLASSES))]
    searches = {"all": _Search(all_folds, list(start))}
    real_folds = sorted(fold for fold in all_folds if fold is not None)
    if len(real_folds) > 1:
        for fold in real_folds:
            searches[f"without fold {fold}"] = _Search(all_folds - {fold}, list(start))
    joint = not READINGS[reading].hausdorff_per_class
    changes, seen = 0, {}  # changes so far; the count each stage last ran after
    for round_ in range(grid.rounds):
        for stage, settings in SearchGrid.STAGES:
            # The cut of a later round has new (refined) candidates; any other stage would
            # change nothing when nothing changed since it last ran.
            key = (stage, round_) if stage == "cut" else stage
            if seen.get(key) == changes:
                continue
            if joint:
                for class_index in range(len(CLASSES)):
                    changes += _joint_stage(
                        passes, searches, grid, stage, settings, round_, class_index
                    )
            else:
                changes += _class_stage(passes, searches, grid, stage, settings, round_)
            seen[key] = changes
    chosen = merge_rule_of(default, searches["all"].rules)
    fold_rules = {
        fold: merge_rule_of(default, searches[f"without fold {fold}"].rules)
        for fold in real_folds
        if f"without fold {fold}" in searches
    }
    cross = {fold: fold_rules.get(fold, chosen) for fold in all_folds}
    rules = {"default": default, "chosen": chosen, "cross_validated": cross}
    tallies = passes.tally_rules(rules, "rule search: report")
    history = [dict(entry, search=name) for name, s in searches.items() for entry in s.history]
    return SearchResult(reading, default, chosen, fold_rules, folds, tallies, history)


def _class_stage(passes, searches, grid, stage, settings, round_) -> bool:
    """One pass: every class's candidates of every search; each class keeps its best."""
    wanted: dict[tuple[int, ClassRule], None] = {}
    options: dict[tuple[str, int], list[ClassRule]] = {}
    for name, search in searches.items():
        for class_index, current in enumerate(search.rules):
            candidates = grid.candidates(current, settings, round_)
            options[(name, class_index)] = candidates
            wanted.update(dict.fromkeys((class_index, rule) for rule in candidates))
    results = passes.run(f"rule search: {stage}, round {round_ + 1}", class_items=wanted)
    sums = passes.per_fold(results, joint=False)
    changed = False
    for (name, class_index), candidates in options.items():
        search = searches[name]
        current = search.rules[class_index]
        best, score = _best(
            search,
            sums,
            [(class_index, rule) for rule in candidates],
            class_index,
            (class_index, current),
        )
        changed |= best[1] != current
        search.rules[class_index] = best[1]
        search.history.append(
            {"stage": stage, "round": round_ + 1, "class": CLASSES[class_index], "score": score}
        )
    return changed


def _joint_stage(passes, searches, grid, stage, settings, round_, class_index) -> bool:
    """One pass for one class: whole rules with that class's settings varied."""
    wanted: dict[JointRule, None] = {}
    options: dict[str, list[JointRule]] = {}
    for name, search in searches.items():
        rules = []
        for rule in grid.candidates(search.rules[class_index], settings, round_):
            joint = list(search.rules)
            joint[class_index] = rule
            rules.append(tuple(joint))
        options[name] = rules
        wanted.update(dict.fromkeys(rules))
    desc = f"rule search: {stage} ({CLASSES[class_index]}), round {round_ + 1}"
    results = passes.run(desc, joint_items=wanted)
    sums = passes.per_fold(results, joint=True)
    changed = False
    for name, rules in options.items():
        search = searches[name]
        current = tuple(search.rules)
        best, score = _best(search, sums, rules, None, current)
        changed |= best != current
        search.rules = list(best)
        search.history.append(
            {"stage": stage, "round": round_ + 1, "class": CLASSES[class_index], "score": score}
        )
    return changed
