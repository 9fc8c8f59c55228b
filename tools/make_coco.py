"""Build COCO JSON (all.json, train_fold{k}.json, val_fold{k}.json) from a competition data root.

Examples:
    # 4 folds grouped by case, next to the data
    python tools/make_coco.py --data-root data/phantom --out data/phantom/coco --folds 4
    # without the case-days whose labels are known to be wrong (they are in the competition's data)
    python tools/make_coco.py --data-root data/phantom --out data/coco_clean --folds 4 --exclude-bad

Every training slice becomes one image (empty slices included); every 8-connected component of a
class mask one annotation in COCO RLE (holes kept). Folds are grouped by case. The folder gets a
manifest.json: training reads the folds it lists, so rebuilding with fewer folds into the same
folder never leaves old fold files to train on. Nothing is written if any input is bad.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from uwm_d2.cli import parse_tool_args, run_main, tool_parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = tool_parser(__doc__)
    parser.add_argument(
        "--data-root", type=Path, required=True, help="folder with train.csv and train/"
    )
    parser.add_argument(
        "--out", type=Path, required=True, help="output folder (created if missing)"
    )
    parser.add_argument("--folds", type=int, default=5, help="grouped folds (default 5)")
    parser.add_argument("--seed", type=int, default=0, help="fold assignment seed (default 0)")
    parser.add_argument(
        "--exclude-bad",
        action="store_true",
        help="drop the case-days with known label problems (see competition notes)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="worker processes (default: one per 1,000 slices, at most all CPUs)",
    )
    return parse_tool_args(parser, argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from uwm_d2.data.coco import make_coco

    build = make_coco(
        args.data_root,
        args.out,
        num_folds=args.folds,
        seed=args.seed,
        exclude_bad=args.exclude_bad,
        workers=args.workers,
    )
    if build.replaced:
        print(build.replaced)
    print("\n".join(build.summary_lines()))
    print(f"wrote {len(build.files())} files to {args.out}")


if __name__ == "__main__":
    run_main(main)
