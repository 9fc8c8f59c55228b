#!/usr/bin/env python
"""Combine several cross-validations into one ensemble: member weights and a rule chosen on OOF maps

Every --cv folder is a finished tools/cross_validate.py run over the same folds (say a semantic and
a Mask R-CNN run). Their out-of-fold maps are averaged with each weight vector of a grid over the
simplex (--step; a member may get 0), the weights whose best cut scores highest on --reading are
kept, and the whole merge rule is chosen on that average, with its cross-validated estimate. The
ensemble file lists every member with weight above 0 (its full config, its fold checkpoints, its
weight) and the rule as its merge: section, for infer_submit --ensemble; OUT.json beside it holds
the weights tried and every rule's scores under every reading.

Examples:
    python tools/choose_ensemble.py --cv output/cv_semantic --cv output/cv_mask_rcnn \\
        --out output/ensemble_cv.yaml
"""

from __future__ import annotations

import argparse
from pathlib import Path

from uwm_d2.cli import int_at_least, parse_tool_args, run_main, tool_parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = tool_parser(__doc__)
    parser.add_argument(
        "--cv", action="append", type=Path, required=True, help="a cross-validation folder"
    )
    parser.add_argument("--out", required=True, type=Path, help="the ensemble file to write")
    parser.add_argument(
        "--reading",
        "--rules",
        dest="reading",
        choices=("project", "competition", "mlebench"),
        default="project",
        help="the reading of the metric to choose on (default: project)",
    )
    parser.add_argument(
        "--step", type=float, default=0.25, help="grid step of the member weights (default 0.25)"
    )
    parser.add_argument(
        "--workers", type=int_at_least(1), default=1, help="processes for the passes (default 1)"
    )
    return parse_tool_args(parser, argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from uwm_d2.crossval.combine import combine_cross_validations

    lines = combine_cross_validations(args.cv, args.out, args.reading, args.step, args.workers)
    print("\n".join(lines))
    print(f"wrote {args.out} and {args.out}.json")
    return 0


if __name__ == "__main__":
    run_main(main)
