"""What ``tools/train_net.py`` does before any process starts: its arguments and every check.

detectron2's ``default_argument_parser`` knows nothing of this project; :func:`build_parser` adds
the configs, the common ``UWM.*`` keys and the rule that flags come before ``KEY VALUE``
overrides to ``--help``. :func:`prepare_run` then checks everything that can be checked without
starting training, in an order that writes nothing until all of it passed: a missing
``--config-file``, a flag after the overrides, the config, ``OUTPUT_DIR``, the process count, the
data root, the checkpoint to load (a local file must exist; a model-zoo URL is fetched now, so an
offline machine fails in one line instead of leaving ``config.yaml``, ``log.txt`` and an events
file behind after hundreds of lines of output), and finally the COCO files (built once, here,
so that workers never race to write them).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
from collections.abc import Sequence
from contextlib import redirect_stderr
from pathlib import Path
from typing import Any

from uwm_d2.core.errors import UWMInputError

#: Prefixes of ``MODEL.WEIGHTS`` that name a download rather than a local file.
REMOTE_PREFIXES = ("detectron2://", "http://", "https://", "catalog://", "s3://", "gs://")

_HELP = """\
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

examples:
  python tools/train_net.py --config-file configs/demo/semantic_R_18_FPN_cpu_demo.yaml \\
      UWM.DATA_ROOT demo_output/data OUTPUT_DIR out/semantic
  python tools/train_net.py --config-file configs/demo/semantic_R_18_FPN_cpu_demo.yaml \\
      --resume UWM.DATA_ROOT demo_output/data OUTPUT_DIR out/semantic SOLVER.MAX_ITER 600
  python tools/train_net.py --config-file configs/demo/semantic_R_18_FPN_cpu_demo.yaml \\
      --eval-only UWM.DATA_ROOT demo_output/data MODEL.WEIGHTS out/semantic/model_best.pth
  python tools/train_net.py --config-file configs/mask_rcnn_R_50_FPN_3x_uwm.yaml --num-gpus 8 \\
      UWM.DATA_ROOT /data/uwmgi UWM.COCO_DIR /data/coco UWM.FOLD 0 OUTPUT_DIR out/r50_f0

Flags (--resume, --eval-only, --num-gpus, ...) go BEFORE the KEY VALUE overrides: everything after
the first override is read as overrides. With MODEL.DEVICE cpu, --num-gpus N starts N CPU
processes (gloo). Ctrl-C stops training; rerun the same command with --resume to continue from
the last checkpoint. The console shows progress; OUTPUT_DIR/log.txt has detectron2's full log
(--verbose prints it to the console too).
"""


def build_parser() -> argparse.ArgumentParser:
    """detectron2's ``default_argument_parser`` with this project's help and ``--verbose``."""
    from detectron2.engine import default_argument_parser

    parser = default_argument_parser(epilog=_HELP)
    parser.description = (
        "Train or evaluate a uwm_d2 model (Mask R-CNN, semantic or both) on the UW-Madison GI\n"
        "tract data: detectron2's train_net, with this project's data, metric and checks."
    )
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    helps = {
        "--num-gpus": "processes per machine: one per GPU (MODEL.DEVICE cuda), or CPU processes",
        "--resume": "continue from OUTPUT_DIR's last checkpoint (same iteration, same best score)",
        "--eval-only": "score MODEL.WEIGHTS (or, with --resume, the last checkpoint); no training",
    }
    helps["--dist-url"] = (
        "rendezvous of a multi-machine run, tcp://HOST:PORT of machine 0 (the same on every "
        "machine); on one machine leave it out: each run picks a free port"
    )
    for flag, text in helps.items():
        parser._option_string_actions[flag].help = text
    # detectron2's default is one fixed port per user: two runs on one machine collided on it.
    parser.set_defaults(dist_url="auto")
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="print detectron2's whole log (config, model, data tables) to the console too",
    )
    return parser


def check_flag_order(opts: Sequence[str]) -> None:
    """A flag among the overrides would be read as a config key: say so, by name."""
    flags = [token for token in opts if token.startswith("--")]
    if flags:
        raise UWMInputError(
            f"flag {flags[0]} comes after the KEY VALUE overrides; put every flag before the "
            f"first override (e.g. train_net.py --config-file ... {flags[0]} UWM.DATA_ROOT ...)"
        )


def check_weights(cfg: Any, eval_only: bool, resume: bool) -> None:
    """The checkpoint the run will load exists (local) or can be fetched now (a URL); the one
    ``--eval-only`` scores also fits the config.

    Raises:
        UWMInputError: ``--eval-only`` without a checkpoint; a missing local file; a download
            that fails (offline); a checkpoint to evaluate that does not fit the config.
    """
    weights = str(cfg.MODEL.WEIGHTS)
    last = Path(cfg.OUTPUT_DIR) / "last_checkpoint"
    if resume and last.is_file():
        return  # the run's own last checkpoint is loaded, not MODEL.WEIGHTS
    if not weights:
        if eval_only:
            raise UWMInputError("--eval-only needs a checkpoint: set MODEL.WEIGHTS")
        return
    if weights.startswith(REMOTE_PREFIXES):
        from detectron2.checkpoint.catalog import ModelCatalog  # noqa: F401 (registers handlers)
        from detectron2.utils.file_io import PathManager

        # iopath draws a progress bar and logs its own failure lines on stderr: fine on a
        # terminal, but in a log or a pipe the failure must stay one line.
        quiet = contextlib.nullcontext() if sys.stderr.isatty() else redirect_stderr(io.StringIO())
        try:
            with quiet:
                PathManager.get_local_path(weights)  # downloads once into the cache
        except Exception as error:  # any failure to fetch is the same to the user
            reason = " ".join(str(error).split())[:200]
            raise UWMInputError(
                f"cannot fetch MODEL.WEIGHTS {weights!r} ({reason}); offline, train from scratch "
                "with configs/mask_rcnn_R_50_FPN_gn_scratch_uwm.yaml or a demo config"
            ) from None
        return
    for path in weights.split(","):
        if not Path(path.strip()).is_file():
            raise UWMInputError(f"MODEL.WEIGHTS {path.strip()!r} does not exist")
    if eval_only:
        # Load it once into the model on the CPU: a checkpoint that does not fit the config fails
        # here, in one line, before anything is written.
        from detectron2.modeling import build_model

        from uwm_d2.engine.checkpoint import load_checkpoint

        cpu = cfg.clone()
        cpu.defrost()
        cpu.MODEL.DEVICE = "cpu"
        load_checkpoint(build_model(cpu), weights)


class NothingToResumeError(Exception):
    """``--resume`` of a run that already reached ``SOLVER.MAX_ITER``: nothing to train (exit 0)."""


def last_checkpoint(output_dir: str | Path) -> tuple[Path, int] | None:
    """``(file, iteration)`` of the checkpoint ``--resume`` would load, or ``None``.

    Raises:
        UWMInputError: ``last_checkpoint`` names a file that is missing or unreadable.
    """
    tag = Path(output_dir) / "last_checkpoint"
    if not tag.is_file():
        return None
    path = Path(output_dir) / tag.read_text().strip()
    import torch

    try:  # memory-mapped: only the iteration is read, not hundreds of MB of weights
        iteration = int(
            torch.load(path, map_location="cpu", weights_only=True, mmap=True)["iteration"]
        )
    except (OSError, RuntimeError, KeyError, TypeError, ValueError) as error:
        raise UWMInputError(
            f"{str(tag)!r} names {path.name}, which cannot be read ({' '.join(str(error).split())})"
        ) from None
    return path, iteration


def check_run_folder(cfg: Any, eval_only: bool, resume: bool) -> str:
    """``OUTPUT_DIR`` and the flags agree: a folder that holds a run is only continued, never
    trained over; a finished run is only resumed to train longer.

    Returns:
        ``""``, or what to say when ``--resume`` finds the run finished (nothing to train).

    Raises:
        UWMInputError: training without ``--resume`` into a folder that holds a run (its
            ``model_best.pth`` would be replaced by a new run's first evaluation).
    """
    if eval_only:
        return ""
    found = last_checkpoint(cfg.OUTPUT_DIR)
    if found is None:
        return ""
    path, iteration = found
    if not resume:
        raise UWMInputError(
            f"OUTPUT_DIR {cfg.OUTPUT_DIR!r} already holds a run (last checkpoint {path.name}, "
            f"iteration {iteration}); continue it with --resume, or train into another OUTPUT_DIR"
        )
    if iteration + 1 < cfg.SOLVER.MAX_ITER:
        return ""
    return (
        f"{cfg.OUTPUT_DIR} already trained to iteration {iteration + 1} (SOLVER.MAX_ITER "
        f"{cfg.SOLVER.MAX_ITER}): nothing to resume; to train longer, resume with a larger "
        "SOLVER.MAX_ITER"
    )


def check_folds(cfg: Any, eval_only: bool, resume: bool) -> None:
    """``UWM.FOLD`` and ``UWM.NUM_FOLDS`` fit the COCO folder, and a resumed or evaluated model
    meets the splits it was trained on (:mod:`uwm_d2.data.splits`).

    Raises:
        UWMInputError: naming the key, the folder and what it holds.
    """
    from uwm_d2.config import coco_dir_of
    from uwm_d2.data.register import fold_numbers
    from uwm_d2.data.splits import RunSplits, check_evaluation, check_resume

    coco_dir = coco_dir_of(cfg)
    folds = fold_numbers(coco_dir)
    if len(folds) != cfg.UWM.NUM_FOLDS:
        raise UWMInputError(
            f"UWM.NUM_FOLDS is {cfg.UWM.NUM_FOLDS} but the COCO folder {str(coco_dir)!r} holds "
            f"{len(folds)} folds; set UWM.NUM_FOLDS {len(folds)}, or rebuild the folder with "
            f"tools/make_coco.py --folds {cfg.UWM.NUM_FOLDS}"
        )
    if cfg.UWM.FOLD not in folds:
        raise UWMInputError(
            f"UWM.FOLD {cfg.UWM.FOLD} is not a fold of {str(coco_dir)!r} (folds 0 to "
            f"{len(folds) - 1})"
        )
    current = RunSplits.of(coco_dir, cfg.UWM.FOLD)
    if resume and not eval_only:
        check_resume(RunSplits.read(cfg.OUTPUT_DIR), current, str(cfg.OUTPUT_DIR))
        return
    if eval_only:
        weights = [w.strip() for w in str(cfg.MODEL.WEIGHTS).split(",") if w.strip()]
        folders = {str(Path(w).parent): w for w in weights if not w.startswith(REMOTE_PREFIXES)}
        if resume:
            folders[str(cfg.OUTPUT_DIR)] = str(cfg.OUTPUT_DIR)
        for folder, name in folders.items():
            check_evaluation(RunSplits.read(folder), current, name)


def prepare_run(args: argparse.Namespace) -> Any:
    """Every check before launch (see the module docstring); returns the frozen config.

    Raises:
        UWMInputError: naming the first thing that is wrong; nothing has been written then.
        NothingToResumeError: ``--resume`` of a finished run without a larger ``SOLVER.MAX_ITER``.
    """
    from uwm_d2.config import build_cfg, coco_dir_of
    from uwm_d2.core.atomic import check_output_folder
    from uwm_d2.core.layout import check_data_root
    from uwm_d2.data.register import ensure_coco_files, has_coco_files
    from uwm_d2.engine.launch import check_num_processes

    if not args.config_file:
        raise UWMInputError(
            "no --config-file given; e.g. --config-file "
            "configs/demo/semantic_R_18_FPN_cpu_demo.yaml (train_net.py --help lists the configs)"
        )
    check_flag_order(args.opts)
    cfg = build_cfg(args.config_file, args.opts)
    check_output_folder(cfg.OUTPUT_DIR)
    # On CUDA one process per GPU; with MODEL.DEVICE cpu, --num-gpus counts CPU processes.
    check_num_processes(args.num_gpus, cfg.MODEL.DEVICE)
    check_data_root(cfg.UWM.DATA_ROOT, "UWM.DATA_ROOT")
    finished = check_run_folder(cfg, args.eval_only, args.resume)
    check_weights(cfg, args.eval_only, args.resume)
    coco_dir = coco_dir_of(cfg)
    if not has_coco_files(coco_dir) and not 0 <= cfg.UWM.FOLD < cfg.UWM.NUM_FOLDS:
        raise UWMInputError(
            f"UWM.FOLD {cfg.UWM.FOLD} is not a fold of the {cfg.UWM.NUM_FOLDS} folds "
            f"(UWM.NUM_FOLDS) that would be built into {str(coco_dir)!r}"
        )
    ensure_coco_files(coco_dir, cfg.UWM.DATA_ROOT, cfg.UWM.NUM_FOLDS)
    check_folds(cfg, args.eval_only, args.resume)
    if finished:  # after every check: bad input is reported even then
        raise NothingToResumeError(finished)
    return cfg


def record_splits(cfg: Any) -> None:
    """Write what a training run trains and validates on into ``OUTPUT_DIR`` (main process)."""
    from detectron2.utils import comm

    from uwm_d2.config import coco_dir_of
    from uwm_d2.data.splits import RunSplits

    if comm.is_main_process():
        RunSplits.of(coco_dir_of(cfg), cfg.UWM.FOLD).write(cfg.OUTPUT_DIR)


def interrupted_message(cfg: Any, eval_only: bool) -> str:
    """What to do after Ctrl-C: resume from the last checkpoint, or, before the first one was
    saved, start again (``--resume`` would start from iteration 0 all the same)."""
    if eval_only:
        return "interrupted"
    if (Path(cfg.OUTPUT_DIR) / "last_checkpoint").is_file():
        return (
            "interrupted; rerun the same command with --resume to continue from the last "
            f"checkpoint in {cfg.OUTPUT_DIR}"
        )
    return (
        f"interrupted before the first checkpoint (saved every SOLVER.CHECKPOINT_PERIOD = "
        f"{cfg.SOLVER.CHECKPOINT_PERIOD} iterations): nothing to resume; run the same command "
        "again, with a smaller SOLVER.CHECKPOINT_PERIOD to keep a checkpoint sooner"
    )
