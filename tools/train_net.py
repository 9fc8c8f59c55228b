#!/usr/bin/env python
"""Train (or evaluate) a Mask R-CNN on the UW-Madison GI tract data: detectron2's train_net shape.

Examples::

    python tools/train_net.py \\
        --config-file configs/quick_schedules/mask_rcnn_R_18_FPN_instant_test.yaml \\
        UWM.DATA_ROOT data/phantom UWM.COCO_DIR data/coco OUTPUT_DIR out/instant MODEL.DEVICE cpu
    python tools/train_net.py --config-file configs/mask_rcnn_R_50_FPN_3x_uwm.yaml --num-gpus 8 \\
        UWM.DATA_ROOT /data/uwmgi UWM.COCO_DIR /data/uwmgi_coco UWM.FOLD 0 OUTPUT_DIR out/r50_f0
    python tools/train_net.py --config-file ... --resume SOLVER.MAX_ITER 20000    # continue
    python tools/train_net.py --config-file ... --eval-only MODEL.WEIGHTS out/r50_f0/model_best.pth

--num-gpus / --num-machines / --machine-rank / --dist-url start torch.distributed through
detectron2's ``launch``. The COCO files are built from UWM.DATA_ROOT into UWM.COCO_DIR first if
that folder holds none. Input errors (unknown config key, missing data, no GPU) print one line.
"""

from __future__ import annotations

import argparse
from typing import Any

from uwm_d2.cli import run_main


def setup(args: argparse.Namespace) -> Any:
    """cfg from the file and the overrides, detectron2's default_setup, datasets registered."""
    from uwm_d2.config import setup_cfg
    from uwm_d2.data.register import register_from_cfg

    cfg = setup_cfg(args)
    register_from_cfg(cfg)
    return cfg


def main(args: argparse.Namespace) -> Any:
    """Runs in every process ``launch`` starts."""
    from uwm_d2.engine import UWMTrainer

    cfg = setup(args)
    if args.eval_only:
        return UWMTrainer.evaluate_checkpoint(cfg, resume=args.resume)
    trainer = UWMTrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def cli() -> None:
    from detectron2.engine import default_argument_parser

    from uwm_d2.config import build_cfg, coco_dir_of
    from uwm_d2.core.atomic import check_output_folder
    from uwm_d2.core.errors import UWMInputError
    from uwm_d2.data.register import ensure_coco_files
    from uwm_d2.engine.launch import check_num_processes, launch

    args = default_argument_parser().parse_args()
    # Check the config and build missing COCO files once, here, before any worker starts: an input
    # error is then one line, and workers never race to write the same files.
    cfg = build_cfg(args.config_file, args.opts)
    check_output_folder(cfg.OUTPUT_DIR)  # before the (slow) COCO build writes anything
    # On CUDA one process per GPU; with MODEL.DEVICE cpu, --num-gpus counts CPU processes.
    check_num_processes(args.num_gpus, cfg.MODEL.DEVICE)
    if not cfg.UWM.DATA_ROOT:
        raise UWMInputError("UWM.DATA_ROOT is not set (the competition data root)")
    ensure_coco_files(coco_dir_of(cfg), cfg.UWM.DATA_ROOT, cfg.UWM.NUM_FOLDS)
    launch(
        main,
        args.num_gpus,
        device=cfg.MODEL.DEVICE,  # NCCL for CUDA, gloo for the CPU
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )


if __name__ == "__main__":
    run_main(cli)
