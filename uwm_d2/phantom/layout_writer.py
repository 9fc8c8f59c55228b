"""Planning a phantom data root (cases, days, splits, geometries, gains) and writing it.

(:mod:`uwm_d2.core.layout_reader` reads a data root in this layout.)

:func:`make_phantom` draws the plan from the seed, renders every case-day (in worker processes via
:func:`uwm_d2.core.progress.parallel_map`, largest first), and writes the competition's layout:
``train/<case>/<case>_<day>/scans/slice_<ZZZZ>_<W>_<H>_<PX>_<PY>.png``, the same under ``test/``,
``train.csv`` and ``test_truth.csv`` (``id,class,segmentation``, row-major 1-based RLE) and
``sample_submission.csv`` (``id,class,predicted``, empty predictions).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from uwm_d2.core.atomic import atomic_write_text, check_output_folder, output_folder
from uwm_d2.core.errors import UWMInputError
from uwm_d2.core.ids import CLASSES, format_scan_name, format_slice_id
from uwm_d2.core.io import write_scan
from uwm_d2.core.progress import Progress, parallel_map
from uwm_d2.core.rle import rle_encode
from uwm_d2.phantom.anatomy import case_anatomy, deform
from uwm_d2.phantom.render import ScanRenderer


@dataclass(frozen=True)
class ScanGeometry:
    """Pixel grid of one case: ``width x height`` pixels of ``spacing`` mm, ``num_slices`` deep."""

    width: int
    height: int
    spacing: float
    num_slices: int


#: The competition's scan geometries (W x H; the array is (H, W)) and how often each is drawn.
GEOMETRIES: dict[str, ScanGeometry] = {
    "266x266": ScanGeometry(266, 266, 1.50, 144),
    "360x310": ScanGeometry(360, 310, 1.50, 144),
    "276x276": ScanGeometry(276, 276, 1.63, 80),
    "234x234": ScanGeometry(234, 234, 1.50, 144),
}
_GEOMETRY_WEIGHTS = np.array([0.55, 0.2, 0.1, 0.15])

#: Largest case number of the real data; phantom case numbers are drawn from 1.._MAX_CASE.
_MAX_CASE = 156

#: Counts per unit of relative signal (subcutaneous fat = 1), log-uniform over this range and
#: stratified over the case-days of a build, so that even a small build spans it: scan maxima
#: then run from about 1,000 to about 20,000, as across the real case-days.
_GAIN_RANGE = (700.0, 13000.0)


@dataclass(frozen=True)
class CaseDayJob:
    """Everything one worker needs to render and write one case-day."""

    out: str
    split: str
    seed: int
    case: int
    day: int
    day_index: int
    geometry: ScanGeometry
    num_slices: int
    gain: float


@dataclass(frozen=True)
class PhantomSummary:
    """What :func:`make_phantom` wrote."""

    root: Path
    train_case_days: tuple[str, ...]
    test_case_days: tuple[str, ...]
    train_slices: int
    test_slices: int
    labelled_slices: int
    geometries: dict[str, str]

    def lines(self) -> list[str]:
        """A short human-readable report."""
        total = self.train_slices + self.test_slices
        empty = 1.0 - self.labelled_slices / total if total else 0.0
        sizes = sorted({name for name in self.geometries.values()})
        return [
            f"phantom data root: {self.root}",
            f"train: {len(self.train_case_days)} case-days, {self.train_slices} slices",
            f"test:  {len(self.test_case_days)} case-days, {self.test_slices} slices",
            f"slices without any organ: {empty:.0%}; scan sizes (W x H): {', '.join(sizes)}",
        ]


def render_case_day(job: CaseDayJob) -> list[tuple[str, str, str, str]]:
    """Render and write one case-day's PNGs; return ``(id, rle large, rle small, rle stomach)``.

    Runs in a worker process; everything random follows from ``(seed, case, day)`` and the
    planned gain, so the bytes do not depend on which process renders which case-day.
    """
    cv2.setNumThreads(1)  # one process per case-day already uses every core
    geometry = job.geometry
    field_of_view = (geometry.width * geometry.spacing, geometry.height * geometry.spacing)
    anatomy = case_anatomy(job.seed, job.case, field_of_view)
    rng = np.random.default_rng([job.seed, job.case, job.day, 0xD1])
    if job.day_index > 0:
        anatomy = deform(anatomy, rng)
    renderer = ScanRenderer(
        anatomy, geometry.width, geometry.height, geometry.spacing, rng, job.gain
    )
    folder = (
        Path(job.out) / job.split / f"case{job.case}" / f"case{job.case}_day{job.day}" / "scans"
    )
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for index in range(job.num_slices):
        pixels, masks = renderer.render((index + 0.5) / job.num_slices)
        slice_number = index + 1
        name = format_scan_name(
            slice_number, geometry.width, geometry.height, geometry.spacing, geometry.spacing
        )
        write_scan(folder / name, pixels)
        rows.append(
            (
                format_slice_id(job.case, job.day, slice_number),
                *(rle_encode(masks[name]) for name in CLASSES),
            )
        )
    return rows


def _plan(
    rng: np.random.Generator,
    cases: int,
    test_cases: int,
    days_per_case: int | tuple[int, int],
    case_days: Mapping[int, Sequence[int]] | None,
) -> tuple[dict[int, list[int]], dict[int, list[int]], dict[int, str]]:
    """Choose case numbers, day numbers and geometries: ``(train, test, geometry name by case)``."""
    low, high = (days_per_case, days_per_case) if isinstance(days_per_case, int) else days_per_case
    if not 1 <= low <= high:
        raise UWMInputError(f"days_per_case must be >= 1 (low <= high), got {days_per_case}")

    def draw_days() -> list[int]:
        count = int(rng.integers(low, high + 1))
        first = int(rng.integers(0, 20))
        steps = rng.integers(1, 9, size=count - 1)
        return [first, *(first + np.cumsum(steps)).tolist()]

    if case_days is not None:
        train = {int(case): sorted(int(day) for day in days) for case, days in case_days.items()}
        if any(not days for days in train.values()):
            raise UWMInputError("every case in case_days needs at least one day")
        if any(case < 0 for case in train) or any(min(days) < 0 for days in train.values()):
            raise UWMInputError(f"case and day numbers in case_days must be >= 0: {case_days}")
        pool = np.setdiff1d(np.arange(1, _MAX_CASE + 1 + test_cases), list(train))
        test_numbers = sorted(rng.choice(pool, size=test_cases, replace=False).tolist())
    else:
        numbers = rng.choice(np.arange(1, _MAX_CASE + 1), size=cases + test_cases, replace=False)
        train = {int(case): draw_days() for case in sorted(numbers[:cases].tolist())}
        test_numbers = sorted(numbers[cases:].tolist())
    test = {int(case): draw_days() for case in test_numbers}
    names = list(GEOMETRIES)
    geometry = {}
    for group in (train, test):
        for position, case in enumerate(group):
            # The first case of each split is always non-square, so W/H mix-ups always show; the
            # second training case is always the narrow 234 x 234 field, whose off-centre body
            # runs off the image (organs touching the border).
            if position == 0:
                choice = names.index("360x310")
            elif position == 1 and group is train:
                choice = names.index("234x234")
            else:
                choice = int(rng.choice(len(names), p=_GEOMETRY_WEIGHTS))
            geometry[case] = names[choice]
    return train, test, geometry


def _gains(rng: np.random.Generator, count: int) -> list[float]:
    """``count`` gains, log-uniform over :data:`_GAIN_RANGE`, one per stratum, shuffled."""
    low, high = (math.log(v) for v in _GAIN_RANGE)
    strata = (rng.permutation(count) + rng.uniform(0.0, 1.0, size=count)) / max(count, 1)
    return [float(math.exp(low + q * (high - low))) for q in strata]


def make_phantom(
    out: str | os.PathLike,
    cases: int = 6,
    seed: int = 0,
    max_slices: int | None = None,
    days_per_case: int | tuple[int, int] = (1, 3),
    test_cases: int = 2,
    test_days_from_train: int = 1,
    case_days: Mapping[int, Sequence[int]] | None = None,
    workers: int | None = None,
    progress: bool = True,
) -> PhantomSummary:
    """Write a synthetic data root in the competition layout into the new or empty folder ``out``.

    Args:
        out: the data root to create; its parent must exist and it must be missing or empty.
        cases: number of training cases (ignored when ``case_days`` is given).
        seed: everything (case numbers, anatomy, noise) follows from it; same seed, same bytes.
        max_slices: cap on the slices per scan (144 or 80 otherwise); small values make tiny test
            data that still has empty slices above and below the organs.
        days_per_case: number of scan days of each case, or an inclusive ``(low, high)`` range.
        test_cases: cases seen only in ``test/`` (their labels go to ``test_truth.csv``).
        test_days_from_train: this many training cases with two or more days give their last day
            to ``test/``, as the real test set holds later days of some training cases.
        case_days: explicit ``{case: [day, ...]}`` of the training cases (e.g. to include a case-day
            listed as bad); unseen test cases are still drawn.
        workers: processes rendering case-days in parallel; ``None`` = ``os.cpu_count()``,
            1 renders in this process.
        progress: show progress on stderr (a bar on a terminal, a line per tenth otherwise).

    Returns:
        A :class:`PhantomSummary`.

    Raises:
        UWMInputError: bad counts, or ``out`` not an empty or new folder (missing parents are
            created, and removed again with everything in them if the run fails).
    """
    out = Path(out)
    if cases < 1 and case_days is None:
        raise UWMInputError(f"need at least one training case, got cases={cases}")
    if test_cases < 0 or test_days_from_train < 0:
        raise UWMInputError(
            f"test_cases and test_days_from_train must be >= 0, got {test_cases} and "
            f"{test_days_from_train}"
        )
    if workers is not None and workers < 1:
        raise UWMInputError(f"workers must be >= 1, got {workers}")
    if max_slices is not None and max_slices < 1:
        raise UWMInputError(f"max_slices must be >= 1, got {max_slices}")
    # A data root must not mix two builds: the folder must be new or empty.
    check_output_folder(out, must_be_empty=True)

    rng = np.random.default_rng([seed, 0x5EED])
    train, test, geometry_names = _plan(rng, cases, test_cases, days_per_case, case_days)
    splits: dict[str, list[tuple[int, int, int]]] = {"train": [], "test": []}
    moved = 0
    for case, days in train.items():
        for day_index, day in enumerate(days):
            last = day_index == len(days) - 1
            split = "test" if last and len(days) > 1 and moved < test_days_from_train else "train"
            splits[split].append((case, day, day_index))
        moved += int(len(days) > 1 and moved < test_days_from_train)
    splits["test"].extend(
        (case, day, index) for case, days in test.items() for index, day in enumerate(days)
    )

    entries = [(split, *entry) for split, items in splits.items() for entry in items]
    jobs = []
    for (split, case, day, day_index), gain in zip(entries, _gains(rng, len(entries)), strict=True):
        geometry = GEOMETRIES[geometry_names[case]]
        depth = geometry.num_slices if max_slices is None else min(max_slices, geometry.num_slices)
        jobs.append(CaseDayJob(str(out), split, seed, case, day, day_index, geometry, depth, gain))
    with output_folder(out, must_be_empty=True):  # removed again (with its parents) on failure
        (out / "train").mkdir(exist_ok=True)
        (out / "test").mkdir(exist_ok=True)
        results = _run_jobs(jobs, workers, progress)
        summary = _write_tables(out, jobs, results, splits, geometry_names)
    return summary


def _write_tables(
    out: Path,
    jobs: list[CaseDayJob],
    results: list[list[tuple[str, str, str, str]]],
    splits: dict[str, list[tuple[int, int, int]]],
    geometry_names: dict[int, str],
) -> PhantomSummary:
    """Write train.csv, test_truth.csv and sample_submission.csv; summarize what was made."""

    labelled = 0
    tables: dict[str, list[str]] = {"train": [], "test": []}
    for job, rows in sorted(
        zip(jobs, results, strict=True), key=lambda item: (item[0].split, item[0].case, item[0].day)
    ):
        for slice_id, *rles in rows:
            labelled += any(rles)
            tables[job.split].extend(
                f"{slice_id},{name},{rle}" for name, rle in zip(CLASSES, rles, strict=True)
            )
    atomic_write_text(out / "train.csv", _csv("id,class,segmentation", tables["train"]))
    atomic_write_text(out / "test_truth.csv", _csv("id,class,segmentation", tables["test"]))
    blanks = [line.rsplit(",", 1)[0] + "," for line in tables["test"]]
    atomic_write_text(out / "sample_submission.csv", _csv("id,class,predicted", blanks))

    def case_day_names(split: str) -> tuple[str, ...]:
        return tuple(f"case{case}_day{day}" for case, day, _ in sorted(splits[split]))

    return PhantomSummary(
        root=out,
        train_case_days=case_day_names("train"),
        test_case_days=case_day_names("test"),
        train_slices=sum(job.num_slices for job in jobs if job.split == "train"),
        test_slices=sum(job.num_slices for job in jobs if job.split == "test"),
        labelled_slices=labelled,
        geometries={f"case{case}": name for case, name in sorted(geometry_names.items())},
    )


def _csv(header: str, lines: list[str]) -> str:
    return "\n".join([header, *lines]) + "\n"


def _run_jobs(
    jobs: list[CaseDayJob], workers: int | None, progress: bool
) -> list[list[tuple[str, str, str, str]]]:
    """Render every case-day (in worker processes unless ``workers == 1``); results in job order."""
    # Largest jobs first, so no worker is left alone with a 144-slice scan at the end.
    order = sorted(
        range(len(jobs)),
        key=lambda i: (-jobs[i].num_slices * jobs[i].geometry.width * jobs[i].geometry.height, i),
    )
    ordered = [jobs[i] for i in order]
    count = max(min(workers or os.cpu_count() or 1, len(jobs)), 1)
    with Progress(
        sum(job.num_slices for job in jobs),
        "phantom",
        unit="slice",
        enabled=progress,
        group_unit="case-day",
        group_total=len(jobs),
    ) as bar:
        rendered = parallel_map(
            render_case_day, ordered, count, bar, weight=lambda job: job.num_slices
        )
    results: list[list[tuple[str, str, str, str]]] = [[] for _ in jobs]
    for i, rows in zip(order, rendered, strict=True):
        results[i] = rows
    return results
