"""The project's config keys (``cfg.UWM``) and the one place that turns files + flags into a cfg.

:func:`add_uwm_config` adds every project key under ``cfg.UWM`` (one comment each, detectron2's
``add_<project>_config`` convention); everything else is a standard detectron2 key.
:func:`build_cfg` and :func:`setup_cfg` are what ``tools/train_net.py`` calls, so the tool stays a
few lines long and a mistyped key or value becomes a one-line
:class:`~uwm_d2.core.errors.UWMInputError` that names the key instead of a yacs traceback.
"""

from __future__ import annotations

import argparse
import logging
import math
import re
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml
from detectron2.config import CfgNode as CN  # noqa: N817 (detectron2 spelling)
from detectron2.config import get_cfg

import uwm_d2.modeling  # noqa: F401 (registers the meta-architectures and heads of the configs)
from uwm_d2.core.errors import UWMInputError, one_line
from uwm_d2.core.ids import CLASSES
from uwm_d2.core.io import DEFAULT_SLICE_OFFSETS
from uwm_d2.core.merge import MergeRule

#: detectron2 sampler name (``DATALOADER.SAMPLER_TRAIN``) of the empty-slice-ratio sampler.
EMPTY_RATIO_SAMPLER = "EmptySliceRatioSampler"


def add_uwm_config(cfg: CN) -> None:
    """Add the ``UWM`` subtree (every project key, with its default) to a detectron2 ``cfg``."""
    _C = cfg  # noqa: N806 (detectron2's own add_*_config spelling)
    _C.UWM = CN()
    # Competition data root (holds train.csv and train/<case>/<case_day>/scans/*.png).
    _C.UWM.DATA_ROOT = ""
    # Folder of the COCO files (all.json, train_fold{k}.json, val_fold{k}.json); built from
    # DATA_ROOT when it holds none yet. "" means <OUTPUT_DIR>/coco.
    _C.UWM.COCO_DIR = ""
    # Validation fold that the dataset names uwm_train / uwm_val stand for.
    _C.UWM.FOLD = 0
    # Number of grouped (by case) folds, used when the COCO files are built here.
    _C.UWM.NUM_FOLDS = 5
    # 2.5D input: one channel per offset, the slice at index + offset of the same case-day.
    _C.UWM.SLICE_OFFSETS = tuple(DEFAULT_SLICE_OFFSETS)
    # Intensity window: these percentiles of each 2.5D stack map to 0 and 255 (16-bit scans).
    _C.UWM.INTENSITY_LOW_PERCENTILE = 0.5
    # Upper percentile of the intensity window (see INTENSITY_LOW_PERCENTILE).
    _C.UWM.INTENSITY_HIGH_PERCENTILE = 99.5
    # In-plane pixel spacing (mm) of the training scans; predict_nifti resamples to it (0: never).
    _C.UWM.PIXEL_SPACING_MM = 1.5
    # Drop the case-days whose labels the data's hosts flagged as wrong (train and validation).
    _C.UWM.EXCLUDE_BAD = True
    # Share of empty slices in each training epoch of the EmptySliceRatioSampler, in [0, 1).
    _C.UWM.EMPTY_SLICE_RATIO = 0.3
    # Training reads scans from a decoded, memory-mapped copy of each case-day (built on first use).
    _C.UWM.SCAN_CACHE = True
    # Folder of that copy (2 B/pixel: 5.4-8.6 GB for all of train); "" = <COCO_DIR>/scan_cache.
    _C.UWM.SCAN_CACHE_DIR = ""
    # Decoded slices each process keeps in memory (LRU, MB) for reads not served by that copy.
    _C.UWM.SCAN_LRU_MB = 32

    # Augmentation strengths (training only); the scale jitter is INPUT.MIN_SIZE_TRAIN.
    _C.UWM.AUG = CN()
    # Probability of a horizontal flip.
    _C.UWM.AUG.HFLIP_PROB = 0.5
    # Probability of a random rotation + shift (one affine warp of image and masks).
    _C.UWM.AUG.AFFINE_PROB = 0.5
    # Largest rotation, degrees either way.
    _C.UWM.AUG.ROTATION_DEG = 10.0
    # Largest shift, as a fraction of the image width / height, either way.
    _C.UWM.AUG.SHIFT_FRACTION = 0.0625
    # Probability of a random brightness / contrast / gamma change (image only).
    _C.UWM.AUG.PHOTOMETRIC_PROB = 0.5
    # Largest additive brightness change, as a fraction of the 0..255 range, either way.
    _C.UWM.AUG.BRIGHTNESS = 0.1
    # Largest relative contrast change around the image mean, either way.
    _C.UWM.AUG.CONTRAST = 0.2
    # Largest |log(gamma)| of the gamma change, applied to the [0, 1]-scaled image.
    _C.UWM.AUG.GAMMA = 0.2

    # Evaluation: how instances become one mask per class (the submission uses the same rule).
    _C.UWM.EVAL = CN()
    # Smallest instance score kept, one per class in uwm_d2.core.ids.CLASSES order.
    _C.UWM.EVAL.SCORE_THRESHOLDS = (0.5, 0.5, 0.5)
    # Probability cut for soft masks (detectron2's own postprocess already cuts at 0.5).
    _C.UWM.EVAL.MASK_THRESHOLD = 0.5
    # Per-class cuts of the class maps (one per class, CLASSES order); empty: MASK_THRESHOLD.
    _C.UWM.EVAL.MASK_THRESHOLDS = ()
    # Smallest instance area in pixels (original resolution) kept.
    _C.UWM.EVAL.MIN_AREA = 0
    # Remove predicted 3D components that occupy a single slice (MIN_SLICES_3D at least 2).
    _C.UWM.EVAL.CLEANUP_3D = False
    # The volume steps of the merge rule (uwm_d2/core/merge_steps.py, in this order), one value
    # for every class or one per class (CLASSES order). Weight w of the two neighbouring slices
    # in each slice's z-smoothed map, (p + w p_above + w p_below) / (1 + 2w), in [0, 1].
    _C.UWM.EVAL.Z_SMOOTHING = (0.0,)
    # Presence gate: a class is kept on a slice only if this many pixels pass the cut (0: off).
    _C.UWM.EVAL.SLICE_MIN_PIXELS = (0,)
    # Presence gate: ... and only if the slice's largest probability reaches this (0: off).
    _C.UWM.EVAL.SLICE_MIN_PEAK = (0.0,)
    # Smallest 8-connected 2D component kept on a slice, in pixels (0: off).
    _C.UWM.EVAL.MIN_COMPONENT_2D = (0,)
    # Smallest number of slices a 26-connected 3D component must span to be kept (1: off).
    _C.UWM.EVAL.MIN_SLICES_3D = (1,)
    # Keep only the largest 3D component (after MIN_SLICES_3D).
    _C.UWM.EVAL.KEEP_LARGEST_3D = (False,)
    # A model with instance and semantic heads: weight of the semantic maps in their average.
    _C.UWM.EVAL.SEMANTIC_WEIGHT = 0.5
    # Also run detectron2's COCOEvaluator (segm AP) beside the competition metric.
    _C.UWM.EVAL.COCO_AP = False

    # The multi-label semantic head (MultiLabelSemSegHead): weights of its two losses.
    _C.UWM.SEMANTIC = CN()
    # Weight of the per-pixel binary cross-entropy.
    _C.UWM.SEMANTIC.BCE_WEIGHT = 1.0
    # Weight of the soft Dice loss (per class, over the batch).
    _C.UWM.SEMANTIC.DICE_WEIGHT = 1.0

    # Optimizer: "SGD" (detectron2's, SOLVER.MOMENTUM) or "AdamW" (SOLVER.BASE_LR ~1e-3; both use
    # SOLVER.WEIGHT_DECAY and SOLVER.CLIP_GRADIENTS).
    _C.UWM.OPTIMIZER = "SGD"

    # Periodic checkpoints (model_XXXXXXX.pth) kept on disk, newest first; 0 keeps all.
    # model_final.pth and model_best.pth (weights only) are always kept.
    _C.UWM.KEEP_CHECKPOINTS = 2

    # Iterations between validation-loss estimates; 0 turns them off.
    _C.UWM.VAL_LOSS_PERIOD = 500
    # Images of the first TEST dataset (a fixed, seeded subset) each validation loss averages.
    _C.UWM.VAL_LOSS_IMAGES = 32


def _one_line(error: BaseException) -> str:
    """The message of a yacs/YAML error as one line (yacs puts the key in its message)."""
    text = error.args[0] if isinstance(error, KeyError) and error.args else error
    return one_line(text)


def build_cfg(config_file: str | Path | None, opts: Sequence[str] = ()) -> CN:
    """get_cfg → add_uwm_config → merge_from_file → merge_from_list → validate → freeze.

    Args:
        config_file: a YAML config (may use ``_BASE_``); ``None`` or ``""`` keeps the defaults.
        opts: ``KEY VALUE`` pairs from the command line.

    Raises:
        UWMInputError: a missing or malformed config file, an unknown key, a value of the wrong
            type, an odd-length override list or an inconsistent value; the message is one line
            and names the key or file.
    """
    cfg = get_cfg()
    add_uwm_config(cfg)
    if config_file:
        path = Path(config_file)
        if not path.is_file():
            raise UWMInputError(f"config file {str(path)!r} does not exist")
        try:
            cfg.merge_from_file(str(path))
        except (KeyError, AssertionError, ValueError, TypeError, yaml.YAMLError) as error:
            raise UWMInputError(f"config file {str(path)!r}: {_one_line(error)}") from error
    try:
        cfg.merge_from_list(list(opts))
    except (KeyError, AssertionError, ValueError, TypeError) as error:
        raise UWMInputError(f"command-line config override: {_one_line(error)}") from error
    validate_cfg(cfg)
    cfg.freeze()
    return cfg


def validate_cfg(cfg: CN) -> None:
    """Check the project keys and their consistency with the model keys.

    Raises:
        UWMInputError: naming the first key with a bad value.
    """
    uwm = cfg.UWM
    channels = len(uwm.SLICE_OFFSETS)
    if channels < 1 or not all(isinstance(offset, int) for offset in uwm.SLICE_OFFSETS):
        raise UWMInputError(f"UWM.SLICE_OFFSETS must be integers, got {uwm.SLICE_OFFSETS}")
    for key in ("PIXEL_MEAN", "PIXEL_STD"):
        if len(cfg.MODEL[key]) != channels:
            raise UWMInputError(
                f"MODEL.{key} has {len(cfg.MODEL[key])} values but UWM.SLICE_OFFSETS makes "
                f"{channels} input channels"
            )
    if not 0.0 <= uwm.INTENSITY_LOW_PERCENTILE < uwm.INTENSITY_HIGH_PERCENTILE <= 100.0:
        raise UWMInputError(
            "need 0 <= UWM.INTENSITY_LOW_PERCENTILE < UWM.INTENSITY_HIGH_PERCENTILE <= 100, got "
            f"{uwm.INTENSITY_LOW_PERCENTILE} and {uwm.INTENSITY_HIGH_PERCENTILE}"
        )
    if not (math.isfinite(uwm.SCAN_LRU_MB) and uwm.SCAN_LRU_MB >= 0):
        raise UWMInputError(f"UWM.SCAN_LRU_MB must be >= 0 (0: no LRU), got {uwm.SCAN_LRU_MB}")
    if not 0.0 <= uwm.EMPTY_SLICE_RATIO < 1.0:
        raise UWMInputError(f"UWM.EMPTY_SLICE_RATIO must be in [0, 1), got {uwm.EMPTY_SLICE_RATIO}")
    if uwm.NUM_FOLDS < 2 or uwm.FOLD < 0:
        raise UWMInputError(
            f"need UWM.FOLD >= 0 and UWM.NUM_FOLDS >= 2, got {uwm.FOLD} and {uwm.NUM_FOLDS}"
        )
    if len(uwm.EVAL.SCORE_THRESHOLDS) != len(CLASSES):
        raise UWMInputError(
            f"UWM.EVAL.SCORE_THRESHOLDS needs {len(CLASSES)} values ({', '.join(CLASSES)}), got "
            f"{uwm.EVAL.SCORE_THRESHOLDS}"
        )
    heads = {"ROI_HEADS": _has_instance_head(cfg), "SEM_SEG_HEAD": _has_semantic_head(cfg)}
    for key in [key for key, built in heads.items() if built]:
        num_classes = cfg.MODEL[key].NUM_CLASSES
        if num_classes != len(CLASSES):
            raise UWMInputError(
                f"MODEL.{key}.NUM_CLASSES must be {len(CLASSES)}, got {num_classes}"
            )
    try:
        MergeRule.from_cfg(cfg)  # every UWM.EVAL key of the rule, named when refused
    except ValueError as error:
        raise UWMInputError(str(error)) from None
    if uwm.OPTIMIZER not in ("SGD", "AdamW"):
        raise UWMInputError(f"UWM.OPTIMIZER must be 'SGD' or 'AdamW', got {uwm.OPTIMIZER!r}")
    if uwm.KEEP_CHECKPOINTS < 0:
        raise UWMInputError(f"UWM.KEEP_CHECKPOINTS must be >= 0, got {uwm.KEEP_CHECKPOINTS}")
    for key in ("ROTATION_DEG", "SHIFT_FRACTION", "BRIGHTNESS", "CONTRAST", "GAMMA"):
        value = uwm.AUG[key]
        if not (math.isfinite(value) and value >= 0):
            raise UWMInputError(f"UWM.AUG.{key} must be >= 0, got {value}")
    for key in ("HFLIP_PROB", "AFFINE_PROB", "PHOTOMETRIC_PROB"):
        if not 0.0 <= uwm.AUG[key] <= 1.0:
            raise UWMInputError(f"UWM.AUG.{key} must be in [0, 1], got {uwm.AUG[key]}")
    if uwm.AUG.CONTRAST >= 1.0:
        raise UWMInputError(f"UWM.AUG.CONTRAST must be < 1, got {uwm.AUG.CONTRAST}")
    if uwm.VAL_LOSS_PERIOD < 0 or uwm.VAL_LOSS_IMAGES < 1:
        raise UWMInputError(
            "UWM.VAL_LOSS_PERIOD must be >= 0 and UWM.VAL_LOSS_IMAGES >= 1, got "
            f"{uwm.VAL_LOSS_PERIOD} and {uwm.VAL_LOSS_IMAGES}"
        )
    check_device(cfg)


def _has_instance_head(cfg: CN) -> bool:
    """Whether the configured meta-architecture builds ``MODEL.ROI_HEADS``."""
    return cfg.MODEL.META_ARCHITECTURE != "UWMSemanticSegmentor"


def _has_semantic_head(cfg: CN) -> bool:
    """Whether the configured meta-architecture builds ``MODEL.SEM_SEG_HEAD``."""
    return cfg.MODEL.META_ARCHITECTURE in ("UWMSemanticSegmentor", "UWMPanopticFPN")


def check_device(cfg: CN) -> None:
    """Raise a one-line ``UWMInputError`` when ``MODEL.DEVICE`` names a GPU this machine lacks."""
    device = str(cfg.MODEL.DEVICE)
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise UWMInputError(
                f"MODEL.DEVICE is {device!r} but no CUDA GPU is available; add MODEL.DEVICE cpu"
            )


def setup_cfg(args: argparse.Namespace) -> CN:
    """The whole ``setup(args)`` of a detectron2 tool: :func:`build_cfg`, then what detectron2's
    ``default_setup`` does, except that ``--eval-only`` leaves ``config.yaml`` alone.

    Creates ``OUTPUT_DIR``, sets up logging (``OUTPUT_DIR/log.txt``; the ``uwm_d2`` loggers too),
    logs the environment, the arguments and the config, saves the full config as
    ``OUTPUT_DIR/config.yaml`` (training only: an evaluation must not rewrite the config of the
    run whose checkpoint it scores) and seeds the random generators with ``SEED`` + rank. The
    console keeps to progress lines unless ``args.verbose`` (:func:`quiet_console`); ``log.txt``
    gets everything, without terminal colour codes.
    """
    from detectron2.utils import comm
    from detectron2.utils.logger import setup_logger

    cfg = build_cfg(args.config_file, args.opts)
    # default_setup's environment report imports torch.utils.cpp_extension, which warns on stderr
    # that no CUDA toolkit is found; we compile nothing, and the warning would break the
    # one-line error contract of the tools.
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    # The loggers default_setup will ask for, made first (setup_logger is cached per arguments,
    # so default_setup gets these very objects) to filter them before its first line.
    rank = comm.get_rank()
    Path(cfg.OUTPUT_DIR).mkdir(parents=True, exist_ok=True)
    loggers = [
        setup_logger(cfg.OUTPUT_DIR, distributed_rank=rank, name="fvcore"),
        setup_logger(cfg.OUTPUT_DIR, distributed_rank=rank),
        setup_logger(cfg.OUTPUT_DIR, distributed_rank=rank, name="uwm_d2", abbrev_name="uwm"),
    ]
    for logger in loggers:
        if not any(isinstance(f, _StripTerminalColours) for f in logger.filters):
            logger.addFilter(_StripTerminalColours())
    if not getattr(args, "verbose", False):
        quiet_console()
    _log_and_seed(cfg, args, loggers[1])
    return cfg


def _log_and_seed(cfg: CN, args: argparse.Namespace, logger: logging.Logger) -> None:
    """The rest of ``default_setup``: the run's facts into the log, the config file, the seeds."""
    import torch
    from detectron2.utils import comm
    from detectron2.utils.collect_env import collect_env_info
    from detectron2.utils.env import seed_all_rng

    from uwm_d2.core.atomic import atomic_write_text

    rank = comm.get_rank()
    logger.info(f"Rank of current process: {rank}. World size: {comm.get_world_size()}")
    logger.info("Environment info:\n" + collect_env_info())
    logger.info(f"Command line arguments: {args}")
    logger.info(f"Contents of {args.config_file}:\n{Path(args.config_file).read_text()}")
    logger.info(f"Running with full config:\n{cfg.dump()}")
    eval_only = bool(getattr(args, "eval_only", False))
    if comm.is_main_process() and not eval_only:
        path = Path(cfg.OUTPUT_DIR) / "config.yaml"
        atomic_write_text(path, cfg.dump())
        logger.info(f"Full config saved to {path}")
    # A different, reproducible stream per process (SEED < 0: a fresh random seed per run).
    seed_all_rng(None if cfg.SEED < 0 else cfg.SEED + rank)
    if not eval_only:
        torch.backends.cudnn.benchmark = cfg.CUDNN_BENCHMARK


class _StripTerminalColours(logging.Filter):
    """default_setup logs the config files syntax-highlighted for a terminal (pygments): those
    escape codes would fill ``log.txt`` (380 of 640 lines of a smoke run carried them)."""

    _CODES = re.compile(r"\x1b\[[0-9;]*m")

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and "\x1b[" in record.msg:
            record.msg = self._CODES.sub("", record.msg)
        return True


#: Loggers whose INFO lines the console keeps: training progress (losses, ETA, the iteration a
#: run starts from, its speed, best checkpoints) and this project's own summaries.
CONSOLE_INFO_LOGGERS = (
    "detectron2.utils.events",
    "detectron2.engine.train_loop",
    "detectron2.engine.hooks",
    "uwm_d2",
)


class _ConsoleFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            return True
        return any(
            record.name == name or record.name.startswith(name + ".")
            for name in CONSOLE_INFO_LOGGERS
        )


def quiet_console() -> None:
    """Keep detectron2's console to what a person reads; ``log.txt`` still gets everything.

    detectron2 prints its environment, the config file, the full config, the model and the data
    tables at INFO: about 600 lines before the first iteration of a 6-iteration run.
    """
    for name in ("detectron2", "fvcore", "uwm_d2"):
        for handler in logging.getLogger(name).handlers:
            stream = getattr(handler, "stream", None)
            if stream in (sys.stdout, sys.stderr) and not any(
                isinstance(f, _ConsoleFilter) for f in handler.filters
            ):
                handler.addFilter(_ConsoleFilter())


def coco_dir_of(cfg: CN) -> Path:
    """``UWM.COCO_DIR``, or ``<OUTPUT_DIR>/coco`` when it is empty."""
    return Path(cfg.UWM.COCO_DIR) if cfg.UWM.COCO_DIR else Path(cfg.OUTPUT_DIR) / "coco"
