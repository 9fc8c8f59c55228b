"""Benchmark: CPU seconds per training iteration, ``UWMTrainer`` against plain ``DefaultTrainer``.

Both trainers get the same data loader (``UWMTrainer.build_train_loader``: the 16-bit 2.5D mapper
and the empty-slice sampler), so the difference is our trainer's own overhead (its hooks and step
wrapper); goal <= 10%. The loop is driven step by step in steady state (``MAX_ITER`` far away, so
no end-of-training evaluation; the periodic hooks keep their config periods), alternating the two
trainers to spread the noise of a shared machine. Configs: the instant test (R18-FPN, ~128 px) and
R50-FPN (the from-scratch GN config; the COCO-initialised one needs a download) at 256 px, batch 2.
Torch runs 1 thread, 1 loader worker. Run::

    .venv/bin/python benchmarks/bench_trainer.py [--iters 3] [--repeats 2] [--skip-r50]
"""

from __future__ import annotations

import argparse
import gc
import logging
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

# Run as a plain script from anywhere: the package is used from the checkout, not installed.
REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402
from detectron2.engine import DefaultTrainer  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402

from uwm_d2.config import build_cfg  # noqa: E402
from uwm_d2.data.coco import make_coco  # noqa: E402
from uwm_d2.data.register import register_from_cfg  # noqa: E402
from uwm_d2.engine import UWMTrainer  # noqa: E402
from uwm_d2.phantom import make_phantom  # noqa: E402

CONFIGS = {
    "instant test (R18-FPN, 128-160 px)": (
        "configs/quick_schedules/mask_rcnn_R_18_FPN_instant_test.yaml",
        [],
    ),
    "R50-FPN GN (256 px)": (
        "configs/mask_rcnn_R_50_FPN_gn_scratch_uwm.yaml",
        [
            "INPUT.MIN_SIZE_TRAIN", "(256,)", "INPUT.MAX_SIZE_TRAIN", "384",
            "SOLVER.AMP.ENABLED", "False",
        ],
    ),
}  # fmt: skip


class PlainTrainer(DefaultTrainer):
    """detectron2's DefaultTrainer, given the same training data loader as UWMTrainer."""

    build_train_loader = UWMTrainer.build_train_loader


def _seconds_per_iteration(trainer: DefaultTrainer, warmup: int, iters: int) -> tuple[float, float]:
    """Median wall and main-process CPU seconds of ``iters`` steps (hooks included)."""
    walls, cpus = [], []
    with EventStorage(0) as trainer.storage:
        trainer.iter = trainer.start_iter = 0
        trainer.before_train()
        for trainer.iter in range(warmup + iters):
            wall, cpu = time.perf_counter(), time.process_time()
            trainer.before_step()
            trainer.run_step()
            trainer.after_step()
            if trainer.iter >= warmup:
                walls.append(time.perf_counter() - wall)
                cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--iters", type=int, default=3, help="measured iterations per run (R50: at most 2)"
    )
    parser.add_argument("--warmup", type=int, default=1, help="iterations before measuring")
    parser.add_argument("--repeats", type=int, default=2, help="alternations of the two trainers")
    parser.add_argument("--skip-r50", action="store_true", help="only the instant-test config")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory() as tmp:
        data_root = Path(tmp) / "data"
        make_phantom(data_root, cases=4, test_cases=0, max_slices=24, seed=0, progress=False)
        make_coco(data_root, Path(tmp) / "coco", num_folds=2, progress=False)
        print(f"torch {torch.__version__}, 1 thread, CPU; medians per run, mean of {args.repeats}")
        print("| config | trainer | s/iter (wall) | CPU s/iter (each run) | overhead (CPU) |")
        print("|---|---|---|---|---|")
        for label, (config, opts) in CONFIGS.items():
            if args.skip_r50 and "R50" in label:
                continue
            cfg = build_cfg(
                REPO_ROOT / config,
                [
                    *opts,
                    "MODEL.DEVICE", "cpu",
                    "UWM.DATA_ROOT", str(data_root), "UWM.COCO_DIR", str(Path(tmp) / "coco"),
                    "OUTPUT_DIR", str(Path(tmp) / "out"),
                    "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "100000",
                    "DATALOADER.NUM_WORKERS", "1",
                    # Steady state: the periodic hooks at their production periods (the instant
                    # test evaluates every 3 iterations, which is not per-iteration overhead).
                    "TEST.EVAL_PERIOD", "2000", "SOLVER.CHECKPOINT_PERIOD", "2000",
                    "UWM.VAL_LOSS_PERIOD", "500",
                ],
            )  # fmt: skip
            register_from_cfg(cfg)
            results: dict[str, list[tuple[float, float]]] = {"DefaultTrainer": [], "UWMTrainer": []}
            # R50-FPN iterations take ~10-20 s on one CPU thread: two measured iterations per run
            # keep the whole benchmark within about five minutes.
            iters = min(args.iters, 2) if "R50" in label else args.iters
            pair = [("DefaultTrainer", PlainTrainer), ("UWMTrainer", UWMTrainer)]
            for repeat in range(args.repeats):
                # Alternate which trainer goes first, so order effects cancel out.
                for name, trainer_class in pair if repeat % 2 == 0 else pair[::-1]:
                    trainer = trainer_class(cfg)
                    results[name].append(_seconds_per_iteration(trainer, args.warmup, iters))
                    del trainer
                    gc.collect()  # its data-loader worker goes before the next one starts
            base_cpu = statistics.mean(cpu for _, cpu in results["DefaultTrainer"])
            for name, runs in results.items():
                wall = statistics.mean(w for w, _ in runs)
                cpu = statistics.mean(c for _, c in runs)
                overhead = "" if name == "DefaultTrainer" else f"{(cpu / base_cpu - 1):+.1%}"
                each = ", ".join(f"{c:.2f}" for _, c in runs)
                print(f"| {label} | {name} | {wall:.2f} | {cpu:.2f} ({each}) | {overhead} |")
        print("goal: UWMTrainer overhead <= 10%")


if __name__ == "__main__":
    main()
