"""Write a synthetic data root in the competition layout (train/, test/, train.csv, ...).

Missing parent folders of --out are created (and removed again if the run then fails on bad
input, so nothing is left behind). The result is byte-identical for the same arguments; see
uwm_d2.phantom for what it holds.

Examples:
  # the README quick start's data root: 8 training cases, 2 unseen test patients, 40 slices a scan
  python tools/make_phantom.py --out data/phantom --cases 8 --test-cases 2 --max-slices 40
  # another patient population: every case scanned on two days, seed 1
  python tools/make_phantom.py --out data/phantom_seed1 --cases 8 --test-cases 2 --max-slices 40 \\
      --days 2 --seed 1
"""

from __future__ import annotations

import argparse
from pathlib import Path

from uwm_d2.cli import int_at_least, parse_tool_args, run_main, tool_parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = tool_parser(__doc__)
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
    return parse_tool_args(parser, argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
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
