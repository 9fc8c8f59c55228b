"""Score a submission CSV against the truth with the competition metric; print JSON.

Prints one line per reading of the metric ("score S (dice D, hausdorff H) on N slices, M case-days
[reading]") and the whole result as JSON: with --json FILE the JSON goes to the file and the
summary lines to stdout; without it the JSON goes to stdout and the summary lines to stderr, so
"evaluate ... > scores.json" keeps only the JSON. A submission must hold every (id, class) row of
the truth, under every reading. The readings are uwm_d2.core.readings'; mlebench is MLE-bench's
grader itself (uwm_d2.evaluation.mlebench); the logic is uwm_d2.evaluation.csv_scoring.

readings (--reading; --rules, its old name, is still accepted):
  project      this project's reading, the community's CV code (default): Dice 1 for an empty
               pair, Hausdorff per (case-day, class), unit spacing / volume diagonal.
               JSON as before: score, dice, hausdorff, per_class, clinical, num_slices, ...
  competition  the competition page's text: Dice 0 for an empty pair, coordinates normalized by
               the volume's size. JSON: that reading's summary.
  mlebench     MLE-bench's grader (openai/mle-bench): empty pairs skipped, class masks OR-ed per
               case-day, column-major decoding; rows matched by position against the answers
               (with --data-root: the truth CSV, in its own row order). A file it would reject
               is an error. JSON: its summary; "score" is null when everything is empty.
  all          every reading side by side: the project JSON plus "readings": {name: summary}.
  The clinical block (3D Dice, HD95 in mm: the slow part) is computed for project and all only;
  competition and mlebench alone skip it.

truth:
  --data-root + --truth  the scans (only their file names are read: sizes, spacings) and the
                         truth CSV id,class,segmentation; every reading.
  --answers              MLE-bench's answers file id,class,predicted,image_width,image_height
                         (its private test.csv); no data root; --reading mlebench only (default).

Examples:
  # this project's reading (the default: --reading project may be left out), JSON to a file too
  python tools/evaluate.py --data-root data/phantom --truth data/phantom/test_truth.csv \\
      --pred output/submission.csv --reading project --json output/scores.json
  # the competition page's reading
  python tools/evaluate.py --data-root data/phantom --truth data/phantom/test_truth.csv \\
      --pred output/submission.csv --reading competition
  # MLE-bench's grader, the answers built from the truth CSV and the scans (with its own
  # answers file instead: --answers answers.csv, no data root)
  python tools/evaluate.py --data-root data/phantom --truth data/phantom/test_truth.csv \\
      --pred output/submission.csv --reading mlebench
  # every reading side by side; the summary lines go to stderr, the JSON to the file
  python tools/evaluate.py --data-root data/phantom --truth data/phantom/test_truth.csv \\
      --pred output/submission.csv --reading all > output/scores_all.json
  # per organ and case-day: volumes in mL, their difference, 3D Dice and HD95 (mm), as CSV
  python tools/evaluate.py --data-root data/phantom --truth data/phantom/test_truth.csv \\
      --pred output/submission.csv --volumes output/volume_comparison.csv
  # a cross-validation's out-of-fold predictions (the score its cv_summary.json reports)
  python tools/evaluate.py --data-root data/phantom --truth output/cv_semantic/oof_truth.csv \\
      --pred output/cv_semantic/oof_tuned.csv --reading all --json output/oof_scores.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from uwm_d2.cli import parse_tool_args, run_main, tool_parser
from uwm_d2.core.errors import UWMInputError

# Listed here rather than imported: ``--help`` must not wait for pandas and scipy.
READING_CHOICES = ("project", "competition", "mlebench", "all")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = tool_parser(__doc__)
    parser.add_argument(
        "--data-root", type=Path, default=None, help="folder with the scans (train/, test/)"
    )
    parser.add_argument(
        "--truth", type=Path, default=None, help="truth CSV (id,class,segmentation)"
    )
    parser.add_argument(
        "--answers",
        type=Path,
        default=None,
        help="MLE-bench answers CSV (id,class,predicted,image_width,image_height), instead of "
        "--data-root and --truth",
    )
    parser.add_argument(
        "--pred", type=Path, required=True, help="submission CSV (id,class,predicted)"
    )
    parser.add_argument(
        "--reading",
        choices=READING_CHOICES,
        default=None,
        help="reading of the metric (default: project; mlebench with --answers)",
    )
    # The flag's first name; users' scripts may still say it.
    parser.add_argument(
        "--rules", dest="reading", choices=READING_CHOICES, default=None, help=argparse.SUPPRESS
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the JSON here")
    parser.add_argument(
        "--volumes",
        type=Path,
        default=None,
        metavar="CSV",
        help="also write one row per (case_day, class): voxels and mL of truth and prediction, "
        "their difference (mL, %%), 3D Dice and HD95 in mm (needs --data-root and --truth)",
    )
    return parse_tool_args(parser, argv)


def _check_sources(args: argparse.Namespace) -> str:
    """The reading to score under, or a one-line error naming the flags that do not go together."""
    if args.answers is not None:
        if args.data_root is not None or args.truth is not None:
            raise UWMInputError("--answers replaces --data-root and --truth: give one or the other")
        reading = args.reading or "mlebench"
        if reading != "mlebench":
            raise UWMInputError(
                f"--reading {reading} needs the scans' geometry from a data root (--data-root and "
                f"--truth); an --answers file alone is scored under --reading mlebench only"
            )
        return reading
    if args.data_root is None or args.truth is None:
        missing = "--truth" if args.data_root is not None else "--data-root"
        raise UWMInputError(
            f"missing {missing}: give --data-root and --truth, or --answers (MLE-bench's answers)"
        )
    return args.reading or "project"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    reading = _check_sources(args)
    from uwm_d2.core.atomic import atomic_write_text, check_writable_target
    from uwm_d2.evaluation.csv_scoring import score_csv, summary_lines

    if args.json is not None:
        check_writable_target(args.json)  # fail before the slow part
    if args.volumes is not None:
        if args.answers is not None:
            raise UWMInputError("--volumes needs the scans' spacings: give --data-root and --truth")
        check_writable_target(args.volumes)
    result = score_csv(
        args.pred,
        reading,
        data_root=args.data_root,
        truth_csv=args.truth,
        answers_csv=args.answers,
    )
    volumes_text = None
    if args.volumes is not None:
        from uwm_d2.core.nifti import volumes_csv_text
        from uwm_d2.evaluation.csv_scoring import COMPARISON_COLUMNS, volume_comparison

        rows = volume_comparison(args.data_root, args.truth, args.pred)
        volumes_text = volumes_csv_text(rows, COMPARISON_COLUMNS)
    text = json.dumps(result, indent=2)
    if args.json is not None:
        # The JSON goes to its file; the terminal gets the summary, not 150 lines of JSON.
        atomic_write_text(args.json, text + "\n")
        print("\n".join(summary_lines(result, reading)))
    else:
        for line in summary_lines(result, reading):
            print(line, file=sys.stderr)
        sys.stderr.flush()  # the human lines before the JSON when both go to one terminal
        print(text)
    if volumes_text is not None:
        atomic_write_text(args.volumes, volumes_text)


if __name__ == "__main__":
    run_main(main)
