"""Score a submission CSV against a truth CSV with the competition metric; print JSON.

Example::

    python tools/evaluate.py --data-root data/phantom --truth data/phantom/test_truth.csv \\
        --pred submission.csv --json scores.json

Prints one JSON object: ``score`` (0.4 Dice + 0.6 (1 - normalized 3D Hausdorff)), ``dice``,
``hausdorff``, ``per_class`` and ``clinical`` (3D Dice, HD95 in mm).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from uwm_d2.cli import run_main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data-root", type=Path, required=True, help="folder with the scans (train/, test/)"
    )
    parser.add_argument(
        "--truth", type=Path, required=True, help="truth CSV (id,class,segmentation)"
    )
    parser.add_argument(
        "--pred", type=Path, required=True, help="submission CSV (id,class,predicted)"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the JSON here")
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args()
    from uwm_d2.core.atomic import atomic_write_text, check_writable_target
    from uwm_d2.evaluation.csv_scoring import score_submission

    if args.json is not None:
        check_writable_target(args.json)  # fail before the slow part
    result = score_submission(args.data_root, args.truth, args.pred)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json is not None:
        atomic_write_text(args.json, text + "\n")


if __name__ == "__main__":
    run_main(main)
