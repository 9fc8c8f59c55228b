"""Benchmark: COCO building (read + validate every PNG, decode RLE, components, COCO RLE).

Generates a phantom data root in a temp folder (default 6 training cases of 144 or 80 slices,
1 to 3 days each), then times :func:`uwm_d2.data.coco.build_coco` with 1 and 2 worker processes
(pool start-up included) and prints slices per second and the CPU seconds spent. The goal is
>= 200 slices/s on 2 cores (the real training set, 38,496 slices, then takes about 3 minutes).
Run::

    .venv/bin/python benchmarks/bench_make_coco.py [--cases 6] [--max-slices N] [--workers 1 2]
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

# Run as a plain script from anywhere: the package is used from the checkout, not installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from uwm_d2.data.coco import build_coco
from uwm_d2.phantom import make_phantom


def _cpu_seconds() -> float:
    """User + system CPU time of this process and of its finished children (the workers)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=6)
    parser.add_argument("--max-slices", type=int, default=None)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench_coco_") as folder:
        root = Path(folder) / "data"
        start = time.perf_counter()
        summary = make_phantom(
            root, cases=args.cases, seed=args.seed, max_slices=args.max_slices, test_cases=0
        )
        generated = time.perf_counter() - start
        slices = summary.train_slices + summary.test_slices
        print(
            f"phantom: {len(summary.train_case_days)} train case-days, {slices} slices "
            f"(train + test) in {generated:.1f} s ({slices / generated:.0f} slices/s, all CPUs)"
        )
        load = os.getloadavg()[0]
        rows = []
        for workers in args.workers:
            cpu = _cpu_seconds()
            start = time.perf_counter()
            build = build_coco(root, num_folds=2, workers=workers, progress=False)
            elapsed = time.perf_counter() - start
            cpu = _cpu_seconds() - cpu
            count = len(build.all["images"])
            rows.append((workers, count, elapsed, cpu, count / elapsed))
    # CPU seconds show the work itself even when other programs share the cores and the
    # wall-clock rate suffers (the load average says how busy the machine was).
    print(f"load average before the runs: {load:.1f} on {os.cpu_count()} CPUs")
    print(f"{'workers':>7} | {'slices':>6} | {'wall s':>6} | {'CPU s':>6} | {'slices/s':>8}")
    print(f"{'-' * 7}-+-{'-' * 6}-+-{'-' * 6}-+-{'-' * 6}-+-{'-' * 8}")
    for workers, count, elapsed, cpu, rate in rows:
        print(f"{workers:>7} | {count:>6} | {elapsed:>6.2f} | {cpu:>6.2f} | {rate:>8.0f}")


if __name__ == "__main__":
    main()
