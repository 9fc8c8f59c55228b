"""Benchmark: choosing the merge rule on out-of-fold files the size of the competition's train.

Synthetic out-of-fold maps (:mod:`uwm_d2.crossval.synthetic`: organ-like blobs with noisy edges
and stray false positives, truth to match) shaped like the competition's train (274 case-days,
about 38,500 slices of mostly 266 x 266, some 310 x 360 and 234 x 234, 5 grouped folds) are
written to a temp folder; then the rule search runs with its default grid and its
cross-validated estimate, and the bootstrap report follows. Reported: disk used by the files,
the minutes of each part, the peak memory (max RSS of this process and of the largest worker),
and the memory the evaluator's compressed 8-bit maps of one validation fold would take.

``make bench`` runs a small slice of it (``--case-days 8``); ``--full`` is the whole size.
Run::

    .venv/bin/python benchmarks/bench_rule_search.py [--case-days N | --full] [--workers 2]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np

# Run as a plain script from anywhere: the package is used from the checkout, not installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from uwm_d2.core.merge import MergeRule
from uwm_d2.core.merge_steps import quantize
from uwm_d2.core.probability_files import ProbabilityFolder
from uwm_d2.core.progress import Progress
from uwm_d2.crossval.search import search_rule
from uwm_d2.crossval.synthetic import case_day_maps, competition_like_scans, write_synthetic
from uwm_d2.crossval.uncertainty import oof_report

FULL_CASE_DAYS = 274


def _disk(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.iterdir())


def _peak_mb() -> tuple[float, float]:
    """Max RSS (MB) of this process and of the largest child process so far (Linux: KiB)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return own, children


def _evaluator_fold_mb(scans, seed: int, samples: int = 4) -> float:
    """The evaluator's memory for one fold (a fifth of the slices): each slice's 8-bit maps
    zlib-compressed at level 1, as ``uwm_d2.evaluation.evaluator.pack_maps`` keeps them."""
    packed, slices = 0, 0
    for scan in scans[:samples]:
        _, maps = case_day_maps(scan, seed)
        grid = quantize(maps)
        packed += sum(len(zlib.compress(np.ascontiguousarray(s).tobytes(), 1)) for s in grid)
        slices += scan.depth
    fold_slices = sum(scan.depth for scan in scans) / 5
    return packed / slices * fold_slices / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--case-days", type=int, default=8, help="case-days (default 8)")
    size.add_argument("--full", action="store_true", help=f"all {FULL_CASE_DAYS} case-days")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--reading", default="project", help="reading searched")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--data", type=Path, help="keep the synthetic files in this folder (reused when there)"
    )
    args = parser.parse_args()
    count = FULL_CASE_DAYS if args.full else args.case_days
    scans = competition_like_scans(count, seed=args.seed)
    slices = sum(scan.depth for scan in scans)
    print(f"{count} case-days, {slices} slices, {args.workers} workers, reading {args.reading}")
    print(f"machine: {os.cpu_count()} CPUs seen")
    root = args.data or Path(tempfile.mkdtemp(prefix="bench_rule_search_"))
    try:
        start = time.monotonic()
        oof, labels = root / "oof", root / "train.csv"
        if not labels.is_file():
            with Progress(slices, "write synthetic OOF maps") as progress:
                oof, labels = write_synthetic(root, scans, seed=args.seed, progress=progress)
        written = time.monotonic() - start
        disk = _disk(oof)
        assert len(ProbabilityFolder(oof).case_days) == count
        start = time.monotonic()
        result = search_rule([oof], labels, MergeRule(), args.reading, workers=args.workers)
        searched = time.monotonic() - start
        start = time.monotonic()
        report = oof_report(result.tallies, result.folds)
        reported = time.monotonic() - start
        own, child = _peak_mb()
        print()
        per_day = disk / count / 2**20
        print(f"disk used by the OOF files:  {disk / 2**20:8.1f} MB ({per_day:.2f} MB/case-day)")
        print(f"writing them (0 if reused):  {written / 60:8.2f} min")
        print(f"rule search (+ CV, report):  {searched / 60:8.2f} min")
        print(f"bootstrap report:            {reported / 60:8.2f} min")
        print(f"peak memory, main process:   {own:8.0f} MB")
        print(f"peak memory, largest worker: {child:8.0f} MB")
        print(f"evaluator, one fold's maps:  {_evaluator_fold_mb(scans, args.seed):8.1f} MB")
        print()
        for label in ("default", "chosen", "cross_validated"):
            line = ", ".join(
                f"{reading} {values['all']['score']:.4f} [{values['all']['low']:.4f}, "
                f"{values['all']['high']:.4f}]"
                for reading, values in report[label].items()
                if values["all"]["score"] is not None
            )
            print(f"{label:>16}: {line}")
        print(f"chosen rule: {result.chosen.as_dict()}")
    finally:
        if args.data is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
