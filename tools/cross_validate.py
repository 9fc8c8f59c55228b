#!/usr/bin/env python
"""Cross-validate a config in one command: every fold, out-of-fold maps, a merge rule chosen on them

Trains fold k into OUT/fold{k} with tools/train_net.py (UWM.FOLD k), one fold after the other (a
finished fold is skipped; an interrupted one continues with --resume); predicts every fold's
validation case-days with that fold's best checkpoint (flip TTA unless --no-tta) into OUT/oof
(one 8-bit file per case-day: docs/probabilities.md); chooses the merge rule on those
out-of-fold maps, per class (z-smoothing, cut, slice presence gate, smallest 2D component, 3D
span, keep-largest), under --reading; and writes OUT/cv_summary.json (every reading, per organ and
per fold, 95% intervals from a bootstrap over cases, the rule chosen without each fold applied to
it), OUT/oof_default.csv and OUT/oof_tuned.csv (the out-of-fold predictions under the config's and
the chosen rule; score them against OUT/oof_truth.csv), and OUT/ensemble.yaml (the fold
checkpoints and the chosen rule, for infer_submit --ensemble). The folds come from the COCO
folder's manifest (UWM.COCO_DIR, or OUT/coco built once); KEY VALUE overrides apply to every fold.

Examples:
    # the demo's semantic config, every fold of the phantom's 4
    python tools/cross_validate.py --config-file configs/demo/semantic_R_18_FPN_cpu_demo.yaml \\
        --out output/cv_semantic UWM.DATA_ROOT data/phantom UWM.COCO_DIR data/phantom/coco \\
        UWM.NUM_FOLDS 4
    # Mask R-CNN, each fold started from the same fold of the semantic run (backbone and FPN)
    python tools/cross_validate.py --config-file configs/demo/mask_rcnn_R_18_FPN_cpu_demo.yaml \\
        --out output/cv_mask_rcnn --init-from output/cv_semantic UWM.DATA_ROOT data/phantom \\
        UWM.COCO_DIR data/phantom/coco UWM.NUM_FOLDS 4
    # the same command again, after Ctrl-C or a failed fold: finished folds are skipped
    python tools/cross_validate.py --config-file configs/demo/semantic_R_18_FPN_cpu_demo.yaml \\
        --out output/cv_semantic --resume UWM.DATA_ROOT data/phantom \\
        UWM.COCO_DIR data/phantom/coco UWM.NUM_FOLDS 4
"""

from __future__ import annotations

import argparse
from pathlib import Path

from uwm_d2.cli import (
    add_model_arguments,
    fail,
    int_at_least,
    parse_tool_args,
    run_main,
    tool_parser,
)

READINGS = ("project", "competition", "mlebench")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = tool_parser(__doc__)
    parser.add_argument("--out", required=True, type=Path, help="the cross-validation's folder")
    parser.add_argument(
        "--folds", default="all", help="folds to train and predict: all (default) or e.g. 0,2"
    )
    parser.add_argument(
        "--num-gpus",
        type=int_at_least(1),
        default=1,
        help="processes per fold's training (GPUs; CPU processes with MODEL.DEVICE cpu)",
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue an interrupted fold from its checkpoint"
    )
    parser.add_argument(
        "--no-tta", action="store_true", help="predict the out-of-fold maps without flip TTA"
    )
    parser.add_argument(
        "--reading",
        "--rules",
        dest="reading",
        choices=READINGS,
        default="project",
        help="the reading of the metric the rule is chosen on (default: project)",
    )
    parser.add_argument(
        "--init-from",
        type=Path,
        default=None,
        help="another cross-validation folder: fold k starts from its fold k's best checkpoint",
    )
    parser.add_argument(
        "--workers",
        type=int_at_least(1),
        default=None,
        help="processes for the rule search (default: 1 per 2,000 out-of-fold slices, up to 2)",
    )
    add_model_arguments(parser, ensemble=False, inference=False)
    return parse_tool_args(parser, argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from uwm_d2.engine.crossval import cross_validate

    try:
        lines = cross_validate(
            args.config_file,
            args.opts,
            args.out,
            folds=args.folds,
            resume=args.resume,
            tta=not args.no_tta,
            num_gpus=args.num_gpus,
            init_from=args.init_from,
            reading=args.reading,
            workers=args.workers,
        )
    except KeyboardInterrupt:
        fail("interrupted; rerun the same command with --resume to continue", status=130)
    print("\n".join(lines))
    print(f"wrote {args.out}/cv_summary.json, oof_default.csv, oof_tuned.csv, ensemble.yaml")
    return 0


if __name__ == "__main__":
    run_main(main)
