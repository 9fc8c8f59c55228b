#!/usr/bin/env python
"""Segment NIfTI MRI volumes with trained checkpoints: DIR/<input name>_seg.nii.gz per input.

The same predictor as infer_submit (one config with MODEL.WEIGHTS, comma-separated for a
checkpoint ensemble, or --ensemble FILE across model kinds; --tta flips), the same 2.5D stacking,
intensity window and merge rule. Each output has its input's shape, affine, qform and sform;
uint8 labels 0 background, 1 large_bowel, 2 small_bowel, 3 stomach (where classes overlap the
higher label wins); --per-class also writes DIR/<input name>_<class>.nii.gz 0/1 masks.

Input: a 3D NIfTI (.nii or .nii.gz) whose third axis holds the axial slices, stored as
export_nifti writes the competition's scans (data[x, y, k] = PNG pixel (row y, column x) of
slice k); --reorient turns other orientations to that one by the affine (LPS) and back.
Intensities: integers in 0..65535 are kept; anything else (negative int16, floats) is mapped
linearly from its min..max onto 0..65535 (the models' percentile window is blind to that map).
Spacing: slices are resampled in-plane to UWM.PIXEL_SPACING_MM (1.5) when the header's spacing
differs by more than 10%, and the probabilities back before the cut; slices are not resampled.

Examples:
  # every scan volume export_nifti wrote (their names end in the day's number)
  python tools/predict_nifti.py --config-file configs/demo/semantic_R_18_FPN_cpu_demo.yaml \\
      --input output/nifti/case*_day*[0-9].nii.gz --tta --out output/segmentations \\
      MODEL.WEIGHTS output/semantic/model_best.pth
  # an exported model, no torch for ONNX
  python tools/predict_nifti.py --exported output/export_onnx \\
      --input output/nifti/case*_day*[0-9].nii.gz --per-class --out output/segmentations_onnx

--exported DIR [DIR ...] runs folders of tools/export_model.py instead (several = an ensemble),
needing only pip install "uwm_d2[deploy]" (no torch for ONNX).
A checkpoint is code: load only checkpoints from a source you trust.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from uwm_d2.cli import (
    add_model_arguments,
    parse_tool_args,
    predictor_from_args,
    run_main,
    tool_parser,
)

CONFIG_KEY = re.compile(r"[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)+")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = tool_parser(__doc__)
    parser.add_argument(
        "--input",
        action="extend",
        nargs="+",
        required=True,
        type=Path,
        metavar="SCAN.nii.gz",
        help=(
            "3D NIfTI MRI volumes (several after one --input, or --input repeated; KEY VALUE "
            "overrides may follow them: the first config key starts the overrides)"
        ),
    )
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument(
        "--per-class", action="store_true", help="also write one 0/1 mask file per class"
    )
    parser.add_argument(
        "--reorient",
        action="store_true",
        help="turn the volume to LPS axes by its affine before predicting (and back after)",
    )
    add_model_arguments(parser, exported=True)
    args = parse_tool_args(parser, argv)
    # --input takes every word after it, so overrides right after the volumes land there: the
    # first word that reads as a config key (MODEL.WEIGHTS) starts the overrides.
    for index, word in enumerate(map(str, args.input)):
        if CONFIG_KEY.fullmatch(word):
            args.opts = [*map(str, args.input[index:]), *args.opts]
            args.input = args.input[:index]
            break
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from uwm_d2.inference.nifti import check_inputs

    # Cheap checks first, before torch and detectron2 load (several seconds).
    check_inputs(args.input, args.out)
    from uwm_d2.inference.nifti import predict_nifti_files

    predictor = predictor_from_args(args)
    summary = predict_nifti_files(
        predictor, args.input, args.out, per_class=args.per_class, reorient=args.reorient
    )
    print(f"wrote {summary.volumes} segmentations ({summary.slices} slices) to {summary.out}")
    return 0


if __name__ == "__main__":
    run_main(main)
