"""What ``tools/train_net.py`` does before any process starts: its arguments and every check.

detectron2's ``default_argument_parser`` knows nothing of this project; :func:`build_parser` adds
the help of its flags and ``--verbose`` (the tool's docstring gives the configs, the common
``UWM.*`` keys and the examples; :func:`uwm_d2.cli.parse_tool_args` checks that flags come before
the ``KEY VALUE`` overrides). :func:`prepare_run` then checks everything that can be checked
without starting training, in an order that writes nothing until all of it passed: a missing
``--config-file``, the config, ``OUTPUT_DIR``, the process count, the
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
from contextlib import redirect_stderr
from pathlib import Path
from typing import Any

from uwm_d2.core.errors import UWMInputError, one_line
from uwm_d2.core.weights import is_remote, split_weights


def build_parser() -> argparse.ArgumentParser:
    """detectron2's ``default_argument_parser`` with this project's flag help and ``--verbose``.

    The description and examples come from ``tools/train_net.py``'s docstring
    (:func:`uwm_d2.cli.tool_parser`).
    """
    from detectron2.engine import default_argument_parser

    parser = default_argument_parser()
    helps = {
        "--num-gpus": "processes per machine: one per GPU (MODEL.DEVICE cuda), or CPU processes",
        "--resume": "continue from OUTPUT_DIR's last checkpoint (same iteration, same best score)",
        "--eval-only": "score MODEL.WEIGHTS (or, with --resume, the last checkpoint); no training",
    }
    for flag, text in helps.items():
        parser._option_string_actions[flag].help = text
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="print detectron2's whole log (config, model, data tables) to the console too",
    )
    return parser


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
    if is_remote(weights):
        from detectron2.checkpoint.catalog import ModelCatalog  # noqa: F401 (registers handlers)
        from detectron2.utils.file_io import PathManager

        # iopath draws a progress bar and logs its own failure lines on stderr: fine on a
        # terminal, but in a log or a pipe the failure must stay one line.
        quiet = contextlib.nullcontext() if sys.stderr.isatty() else redirect_stderr(io.StringIO())
        try:
            with quiet:
                PathManager.get_local_path(weights)  # downloads once into the cache
        except Exception as error:  # any failure to fetch is the same to the user
            reason = one_line(error, 200)
            raise UWMInputError(
                f"cannot fetch MODEL.WEIGHTS {weights!r} ({reason}); offline, train from scratch "
                "with configs/mask_rcnn_R_50_FPN_gn_scratch_uwm.yaml or a demo config"
            ) from None
        return
    for path in split_weights(weights):
        if not Path(path).is_file():
            raise UWMInputError(f"MODEL.WEIGHTS {path!r} does not exist")
    if eval_only:
        # Load it once into the model on the CPU: a checkpoint that does not fit the config fails
        # here, in one line, before anything is written.
        from detectron2.modeling import build_model

        from uwm_d2.engine.checkpoint import load_checkpoint

        cpu = cfg.clone()
        cpu.defrost()
        cpu.MODEL.DEVICE = "cpu"
        load_checkpoint(build_model(cpu), weights)


def prepare_run(args: argparse.Namespace) -> Any:
    """Every check before launch (see the module docstring); returns the frozen config.

    Raises:
        UWMInputError: naming the first thing that is wrong; nothing has been written then.
    """
    from uwm_d2.config import build_cfg, coco_dir_of
    from uwm_d2.core.atomic import check_output_folder
    from uwm_d2.core.layout_reader import check_data_root
    from uwm_d2.data.register import ensure_coco_files
    from uwm_d2.engine.launch import check_num_processes

    if not args.config_file:
        raise UWMInputError(
            "no --config-file given; e.g. --config-file "
            "configs/demo/semantic_R_18_FPN_cpu_demo.yaml (train_net.py --help lists the configs)"
        )
    cfg = build_cfg(args.config_file, args.opts)
    check_output_folder(cfg.OUTPUT_DIR)
    # On CUDA one process per GPU; with MODEL.DEVICE cpu, --num-gpus counts CPU processes.
    check_num_processes(args.num_gpus, cfg.MODEL.DEVICE)
    check_data_root(cfg.UWM.DATA_ROOT, "UWM.DATA_ROOT")
    check_weights(cfg, args.eval_only, args.resume)
    ensure_coco_files(coco_dir_of(cfg), cfg.UWM.DATA_ROOT, cfg.UWM.NUM_FOLDS)
    return cfg
