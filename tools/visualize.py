#!/usr/bin/env python
"""Draw truth and/or predicted masks over a case-day's scans, and plot training curves.

Examples:
    # truth (fill) and prediction (outline) of the test split's first case-day, and a GIF
    python tools/visualize.py --data-root data/phantom --split test \\
        --truth data/phantom/test_truth.csv --pred output/submission.csv --gif --out output/pictures
    # training curves
    python tools/visualize.py --metrics output/semantic/metrics.json --out output/pictures
"""

from __future__ import annotations

import argparse
from pathlib import Path

from uwm_d2.cli import parse_tool_args, run_main, tool_parser
from uwm_d2.core.atomic import output_folder
from uwm_d2.core.errors import UWMInputError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = tool_parser(__doc__)
    parser.add_argument("--out", required=True, type=Path, help="folder for the pictures")
    parser.add_argument("--data-root", type=Path, help="competition-layout data root")
    parser.add_argument("--split", default="train", help="train or test (default: train)")
    parser.add_argument(
        "--case-day", help="the scan session to draw, e.g. case12_day3 (default: the split's first)"
    )
    parser.add_argument("--truth", type=Path, help="label CSV (id,class,segmentation)")
    parser.add_argument("--pred", type=Path, help="submission CSV (id,class,predicted)")
    parser.add_argument("--slices", type=int, default=8, help="slices in the montage (default 8)")
    parser.add_argument("--gif", action="store_true", help="also write an animated GIF through z")
    parser.add_argument("--metrics", type=Path, help="metrics.json to plot as training curves")
    return parse_tool_args(parser, argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from uwm_d2 import visualization

    if not args.metrics and not args.data_root:
        raise UWMInputError("nothing to draw: give --data-root (and --case-day) or --metrics")
    if args.case_day and args.data_root is None:
        raise UWMInputError("--case-day needs --data-root")
    if args.metrics and not args.metrics.is_file():
        raise UWMInputError(f"metrics file {str(args.metrics)!r} does not exist")
    written = []
    # A failed run leaves no new folders behind (and nothing half-written: files are atomic).
    with output_folder(args.out):
        if args.data_root is not None:
            written += visualization.render_case_day(
                args.data_root,
                args.case_day,
                args.out,
                args.split,
                args.truth,
                args.pred,
                args.slices,
                args.gif,
            )
        if args.metrics:
            written.append(
                visualization.plot_training_curves(args.metrics, args.out / "training_curves.png")
            )
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    run_main(main)
