"""Write a synthetic data root in the competition layout (train/, test/, train.csv, ...).

Example::

    python tools/make_phantom.py --out data/phantom --cases 6 --test-cases 2 --seed 0

Missing parent folders of ``--out`` are created (and removed again if the run then fails on bad
input, so nothing is left behind). The result is byte-identical for the same arguments; see
:mod:`uwm_d2.phantom` for what it holds.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from uwm_d2.cli import int_at_least, run_main

EXAMPLES = """\
Examples:
  # the demo's data root: 6 training cases, 2 unseen test cases (data/ is created if missing)
  python tools/make_phantom.py --out data/phantom

  # a tiny root for quick experiments: 8 slices per scan, rendered in this process
  python tools/make_phantom.py --out /tmp/tiny --cases 2 --test-cases 1 --max-slices 8 --workers 1

  # another patient population: every case scanned on two days, seed 1
  python tools/make_phantom.py --out data/phantom_seed1 --days 2 --seed 1
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--out",
        type=Path,
        required=True,
        help="new or empty data root to write (missing parent folders are created)",
    )
    parser.add_argument(
        "--cases", type=int_at_least(1), default=6, help="training cases (default 6)"
    )
    parser.add_argument(
        "--test-cases", type=int_at_least(0), default=2, help="cases seen only in test/ (default 2)"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--max-slices",
        type=int_at_least(1),
        default=None,
        help="cap slices per scan (default: 144 or 80)",
    )
    parser.add_argument(
        "--days",
        type=int_at_least(1),
        default=None,
        help="scan days per case (default: 1 to 3 at random)",
    )
    parser.add_argument(
        "--workers", type=int_at_least(1), default=None, help="worker processes (default: all CPUs)"
    )
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args()
    # Imported here so that --help stays instant.
    from uwm_d2.phantom import make_phantom

    # Missing parent folders are created, and removed again if the run fails.
    summary = make_phantom(
        args.out,
        cases=args.cases,
        seed=args.seed,
        max_slices=args.max_slices,
        days_per_case=(1, 3) if args.days is None else args.days,
        test_cases=args.test_cases,
        workers=args.workers,
    )
    print("\n".join(summary.lines()))


if __name__ == "__main__":
    run_main(main)
