#!/usr/bin/env python
"""Predict the scans of a data root with trained checkpoints and write the competition's submission.

Examples:
    # one checkpoint, flip TTA
    python tools/infer_submit.py --config-file configs/demo/semantic_R_18_FPN_cpu_demo.yaml \\
        --data-root data/phantom --tta --out output/submission.csv \\
        MODEL.WEIGHTS output/semantic/model_best.pth
    # a cross-validation's fold ensemble and chosen rule; keep the test probabilities too
    python tools/infer_submit.py --ensemble output/cv_semantic/ensemble.yaml \\
        --data-root data/phantom --tta --out output/cv_submission.csv \\
        --save-probabilities output/test_probabilities
    # an exported model: needs only pip install "uwm_d2[deploy]" (no torch for ONNX)
    python tools/infer_submit.py --exported output/export_onnx --data-root data/phantom \\
        --out output/exported_submission.csv

Rows follow the sample submission (default ROOT/sample_submission.csv; a sample with no rows gives a
header-only file). Several comma-separated checkpoints in MODEL.WEIGHTS make an ensemble of one
config; --ensemble FILE ensembles several configs (model kinds), with weights; see
uwm_d2/inference/ensemble.py for the format. KEY VALUE overrides apply to every config.
--exported DIR [DIR ...] runs folders of tools/export_model.py instead (several = an ensemble;
without --tta, each export's own TTA setting), needing only pip install "uwm_d2[deploy]".
A checkpoint is code: load only checkpoints from a source you trust.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from uwm_d2.cli import (
    add_model_arguments,
    parse_tool_args,
    predictor_from_args,
    run_main,
    tool_parser,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = tool_parser(__doc__)
    parser.add_argument("--data-root", required=True, type=Path, help="competition-layout root")
    parser.add_argument("--split", default="test", help="sub-folder of scans (default: test)")
    parser.add_argument(
        "--sample-submission",
        type=Path,
        help="rows to fill, in order (default: ROOT/sample_submission.csv if it exists)",
    )
    parser.add_argument("--out", required=True, type=Path, help="submission CSV to write")
    parser.add_argument(
        "--save-probabilities",
        type=Path,
        metavar="DIR",
        help="also save each case-day's probability maps there (8-bit, docs/probabilities.md)",
    )
    add_model_arguments(parser, exported=True)
    return parse_tool_args(parser, argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from uwm_d2.core.atomic import check_output_folder, check_writable_target
    from uwm_d2.inference.submission import read_sample_submission

    # Cheap checks first, in a second, before torch and detectron2 load (several seconds).
    check_writable_target(args.out)
    if args.save_probabilities is not None:
        check_output_folder(args.save_probabilities)
    sample = args.sample_submission or args.data_root / "sample_submission.csv"
    if args.sample_submission is not None or sample.is_file():
        read_sample_submission(sample)
    from uwm_d2.inference.pipeline import predict_submission

    predictor = predictor_from_args(args)
    summary = predict_submission(
        predictor,
        args.data_root,
        args.out,
        split=args.split,
        sample_submission=args.sample_submission,
        probabilities=args.save_probabilities,
    )
    print(
        f"wrote {summary.path}: {summary.rows} rows ({summary.non_empty_rows} with a mask) for "
        f"{summary.slices} slices in {summary.case_days} case-days"
    )
    return 0


if __name__ == "__main__":
    run_main(main)
