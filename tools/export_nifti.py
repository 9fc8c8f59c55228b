#!/usr/bin/env python
"""Export case-days as NIfTI volumes: the 16-bit scan, a label map and (optionally) per-class masks.

For each case-day of the label CSV (a truth file id,class,segmentation or a submission
id,class,predicted): DIR/<case_day>.nii.gz (uint16 scan), DIR/<case_day>_seg.nii.gz (uint8
labels) and, with --per-class, DIR/<case_day>_<class>.nii.gz (exact 0/1 masks, overlaps kept).

Layout: data shape (W, H, slices), data[x, y, k] = slice k's PNG pixel at row y, column x,
slices in slice-number order; voxel sizes (PX, PY, 3.0) mm from the scan file names.
Affine: diag(-PX, -PY, 3, 1) as qform and sform (code 2), i.e. LPS axes: radiological viewers
show each slice as its PNG looks. The competition gives no patient orientation: the axis labels
describe the PNGs (anterior at the top, slice numbers toward the head), not a measurement.
Labels: 0 background, 1 large_bowel, 2 small_bowel, 3 stomach; where masks overlap the higher
label wins (stomach over small bowel over large bowel). --volumes CSV writes case_day, class,
voxels, volume_ml (voxels * PX * PY * 3.0 / 1000) from the exact masks.

Examples:
  # the test split's predictions: scans, label maps, organ volumes in mL
  python tools/export_nifti.py --data-root data/phantom --split test \\
      --labels output/submission.csv --out output/nifti --volumes output/volumes.csv
  # the training truth, with one exact mask file per class
  python tools/export_nifti.py --data-root data/phantom --labels data/phantom/train.csv \\
      --out output/nifti_truth --per-class
"""

from __future__ import annotations

import argparse
from pathlib import Path

from uwm_d2.cli import parse_tool_args, run_main, tool_parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = tool_parser(__doc__)
    parser.add_argument("--data-root", required=True, type=Path, help="competition-layout root")
    parser.add_argument(
        "--labels",
        required=True,
        type=Path,
        help="label CSV: id,class,segmentation (truth) or id,class,predicted (submission)",
    )
    parser.add_argument(
        "--split", default=None, help="sub-folder of scans (default: train/ and test/ together)"
    )
    parser.add_argument(
        "--case-day",
        action="append",
        default=[],
        metavar="CD",
        help="export only this case-day (case<N>_day<M>; repeat for more; default: all in the CSV)",
    )
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument(
        "--per-class", action="store_true", help="also write one 0/1 mask file per class"
    )
    parser.add_argument(
        "--volumes", type=Path, default=None, metavar="CSV", help="also write organ volumes here"
    )
    return parse_tool_args(parser, argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from uwm_d2.data.nifti_export import export_case_days

    summary = export_case_days(
        args.data_root,
        args.labels,
        args.out,
        split=args.split,
        case_days=args.case_day,
        per_class=args.per_class,
        volumes_csv=args.volumes,
    )
    line = f"wrote {len(summary.case_days)} case-days ({summary.slices} slices) to {summary.out}"
    if summary.volumes_csv is not None:
        line += f", volumes to {summary.volumes_csv}"
    print(line)
    return 0


if __name__ == "__main__":
    run_main(main)
