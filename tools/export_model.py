#!/usr/bin/env python
"""Export trained checkpoints to ONNX or TorchScript, for a predictor without the training stack.

Writes DIR/uwm_export.json (input size rule, 2.5D offsets, intensity window, PIXEL_MEAN/STD,
classes, merge rule, TTA setting, uwm_d2 version, config hash) beside one network file per
checkpoint. Before DIR appears, the exported networks' probabilities on a few phantom slices are
compared with the PyTorch models' (tolerance 1e-3); a mismatch writes nothing. Run the export with
`infer_submit.py --exported DIR` or `predict_nifti.py --exported DIR`, which need only
`pip install "uwm_d2[deploy]"` (no torch for ONNX; torch alone for TorchScript).

Formats: the semantic kind, Mask R-CNN and the combined kind, each to onnx or torchscript.
Several comma-separated checkpoints in MODEL.WEIGHTS export a checkpoint ensemble; --ensemble
FILE exports every member of an ensemble file (uwm_d2/inference/ensemble.py has the format).
--tta records flip TTA as the export's default. DIR must be new or empty.

Examples:
  # the fold ensemble of a cross-validation, with its chosen rule, for onnxruntime
  python tools/export_model.py --ensemble output/cv_semantic/ensemble.yaml --format onnx \\
      --out output/export_onnx
  # one checkpoint as TorchScript
  python tools/export_model.py --config-file configs/demo/semantic_R_18_FPN_cpu_demo.yaml \\
      --format torchscript --out output/export_ts MODEL.WEIGHTS output/semantic/model_best.pth

A checkpoint is code: export only checkpoints from a source you trust.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from uwm_d2.cli import run_main


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="\n".join(__doc__.splitlines()[2:]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    models = parser.add_mutually_exclusive_group(required=True)
    models.add_argument("--config-file", help="the config the model was trained with")
    models.add_argument(
        "--ensemble", type=Path, help="YAML file listing configs, checkpoints and weights"
    )
    parser.add_argument(
        "--format", required=True, choices=["onnx", "torchscript"], help="network file format"
    )
    parser.add_argument("--out", required=True, type=Path, help="export folder (new or empty)")
    parser.add_argument(
        "--tta", action="store_true", help="record flip TTA as the export's default"
    )
    parser.add_argument(
        "opts", nargs=argparse.REMAINDER, default=[], help="config overrides: KEY VALUE ..."
    )
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    from uwm_d2.core.atomic import check_output_folder

    check_output_folder(args.out, must_be_empty=True)  # before torch loads (seconds)
    from uwm_d2.export.exporter import export_model

    logging.getLogger("fvcore").setLevel(logging.WARNING)
    summary = export_model(
        args.config_file, args.opts, args.format, args.out, args.ensemble, tta=args.tta
    )
    print(
        f"wrote {summary.out}: {summary.networks} {summary.network_format} network(s) of "
        f"{summary.members} member(s); self-check on {summary.slices} phantom slices: largest "
        f"probability difference {summary.max_difference:.2g}"
    )
    return 0


if __name__ == "__main__":
    run_main(main)
