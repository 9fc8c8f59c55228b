#!/usr/bin/env python
"""Train or evaluate a uwm_d2 model (Mask R-CNN, semantic or both) on the UW-Madison GI tract data.

detectron2's train_net shape (setup -> run in every process -> launch), with this project's data,
metric and checks (uwm_d2.engine.prepare) and trainer (uwm_d2.engine). Input errors print one
line (exit 2), a failed run one line (exit 1); nothing is written before every check passed.
Multi-process runs use gloo with MODEL.DEVICE cpu (--num-gpus is then the number of CPU
processes), NCCL on CUDA; UWM_DIST_TIMEOUT (seconds) bounds the wait for a hung peer.

configs (configs/):
  demo/semantic_R_18_FPN_cpu_demo.yaml     make demo's model: per-class sigmoid maps, CPU
  demo/mask_rcnn_R_18_FPN_cpu_demo.yaml    Mask R-CNN at the demo size, CPU
  demo/panoptic_fpn_R_18_cpu_demo.yaml     both heads on one backbone, CPU
  quick_schedules/*_instant_test.yaml      6 iterations of each kind: smoke tests
  mask_rcnn_R_50_FPN_3x_uwm.yaml           GPU, from COCO weights (downloads once)
  mask_rcnn_R_101_FPN_3x_uwm.yaml          GPU, from COCO weights (downloads once)
  mask_rcnn_R_50_FPN_gn_scratch_uwm.yaml   GPU, from scratch (no download)
  semantic_R_50_FPN_3x_uwm.yaml, panoptic_fpn_R_50_3x_uwm.yaml   GPU, the other kinds

common overrides (KEY VALUE, after every flag; all keys: docs/config.md):
  UWM.DATA_ROOT DIR        the competition-layout data (train.csv, train/)
  UWM.COCO_DIR DIR         its COCO files (built there first if missing); default OUTPUT_DIR/coco
  UWM.FOLD K               the validation fold (uwm_train / uwm_val follow it)
  OUTPUT_DIR DIR           checkpoints, metrics.json, log.txt
  MODEL.DEVICE cpu|cuda    SOLVER.MAX_ITER N    SOLVER.IMS_PER_BATCH N    SOLVER.BASE_LR X
  MODEL.WEIGHTS FILE       start from (or, with --eval-only, score) this checkpoint

Examples:
  # the demo's semantic model on fold 0 of 4 (about 4 minutes on 2 CPU cores)
  python tools/train_net.py --config-file configs/demo/semantic_R_18_FPN_cpu_demo.yaml \\
      UWM.DATA_ROOT data/phantom UWM.COCO_DIR data/phantom/coco UWM.NUM_FOLDS 4 \\
      OUTPUT_DIR output/semantic
  # the same run, continued to 400 iterations
  python tools/train_net.py --config-file configs/demo/semantic_R_18_FPN_cpu_demo.yaml --resume \\
      UWM.DATA_ROOT data/phantom UWM.COCO_DIR data/phantom/coco UWM.NUM_FOLDS 4 \\
      OUTPUT_DIR output/semantic SOLVER.MAX_ITER 400
  # score its best checkpoint on its validation fold
  python tools/train_net.py --config-file configs/demo/semantic_R_18_FPN_cpu_demo.yaml \\
      --eval-only UWM.DATA_ROOT data/phantom UWM.COCO_DIR data/phantom/coco UWM.NUM_FOLDS 4 \\
      OUTPUT_DIR output/semantic_eval MODEL.WEIGHTS output/semantic/model_best.pth

Flags (--resume, --eval-only, --num-gpus, ...) go BEFORE the KEY VALUE overrides: everything after
the first override is read as overrides. With MODEL.DEVICE cpu, --num-gpus N starts N CPU
processes (gloo). Ctrl-C stops training; rerun the same command with --resume to continue from
the last checkpoint. The console shows progress; OUTPUT_DIR/log.txt has detectron2's full log
(--verbose prints it to the console too).
"""

from __future__ import annotations

import argparse
from typing import Any

from uwm_d2.cli import fail, parse_tool_args, run_main, tool_parser


def setup(args: argparse.Namespace) -> Any:
    """cfg from the file and the overrides, detectron2's default_setup, datasets registered."""
    from uwm_d2.config import setup_cfg
    from uwm_d2.data.register import register_from_cfg

    cfg = setup_cfg(args)
    register_from_cfg(cfg)
    return cfg


def run(args: argparse.Namespace) -> Any:
    """Runs in every process ``launch`` starts."""
    from uwm_d2.engine import UWMTrainer
    from uwm_d2.engine.prepare import record_splits

    cfg = setup(args)
    if args.eval_only:
        return UWMTrainer.evaluate_checkpoint(cfg, resume=args.resume)
    record_splits(cfg)  # what this run trains on: a resume on other folds is refused
    trainer = UWMTrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def main(argv: list[str] | None = None) -> None:
    from uwm_d2.engine.launch import launch
    from uwm_d2.engine.prepare import (
        NothingToResumeError,
        build_parser,
        interrupted_message,
        prepare_run,
    )

    args = parse_tool_args(tool_parser(__doc__, build_parser()), argv)
    try:
        cfg = prepare_run(args)  # every check, before any process starts or anything is written
    except NothingToResumeError as finished:
        print(finished)
        return
    try:
        launch(
            run,
            args.num_gpus,
            device=cfg.MODEL.DEVICE,  # NCCL for CUDA, gloo for the CPU
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(args,),
        )
    except KeyboardInterrupt:
        fail(interrupted_message(cfg, args.eval_only), status=130)


if __name__ == "__main__":
    run_main(main)
