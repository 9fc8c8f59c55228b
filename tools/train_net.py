#!/usr/bin/env python
"""Train (or evaluate) a uwm_d2 model on the UW-Madison GI tract data: detectron2's train_net shape.

``setup`` → ``main`` → ``launch``, as detectron2's tools; the project's checks and arguments live
in :mod:`uwm_d2.engine.prepare`, the trainer in :mod:`uwm_d2.engine`. ``--help`` lists the configs,
the common overrides and examples. Multi-process runs go through :mod:`uwm_d2.engine.launch`:
gloo with ``MODEL.DEVICE cpu`` (``--num-gpus`` is then the number of CPU processes), NCCL on CUDA;
``UWM_DIST_TIMEOUT`` (seconds) bounds the wait for a hung peer. Input errors print one line
(exit 2), a failed run one line (exit 1); nothing is written before every check passed.
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
    from uwm_d2.engine.prepare import record_splits

    cfg = setup(args)
    if args.eval_only:
        return UWMTrainer.evaluate_checkpoint(cfg, resume=args.resume)
    record_splits(cfg)  # what this run trains on: a resume on other folds is refused
    trainer = UWMTrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def cli() -> None:
    from uwm_d2.cli import fail
    from uwm_d2.engine.launch import launch
    from uwm_d2.engine.prepare import (
        NothingToResumeError,
        build_parser,
        interrupted_message,
        prepare_run,
    )

    args = build_parser().parse_args()
    try:
        cfg = prepare_run(args)  # every check, before any process starts or anything is written
    except NothingToResumeError as finished:
        print(finished)
        return
    try:
        launch(
            main,
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
    run_main(cli)
