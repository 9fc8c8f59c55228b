"""Shared command-line plumbing: every tool's parser, its model arguments, and its one-line errors.

A tool is ``main(argv=None)`` that builds its parser with :func:`tool_parser` (the description and
the ``Examples:`` of ``--help`` come from the tool's docstring), adds the model arguments with
:func:`add_model_arguments` when it runs a trained model, parses with :func:`parse_tool_args`
(flags before the ``KEY VALUE`` overrides), calls the library, and runs through :func:`run_main`:
any :class:`~uwm_d2.core.errors.UWMInputError` (or another expected input problem) is printed as
``error: <message>`` with no traceback. Programming errors still show their traceback, because
hiding those would hide bugs. Nothing here imports torch until a tool builds its predictor.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from uwm_d2.core.errors import (
    INPUT_ERRORS,
    UWMInputError,
    UWMRunError,
    is_out_of_memory,
    one_line,
)

# Before torch loads: OpenMP threads that busy-wait for work stall each other whenever another
# process (a data-loader worker, a second job) holds a core. Measured on the 2-core CPU: 9 s per
# training iteration with the default policy against 1.4 s with PASSIVE. Users can still override.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


#: Warnings that third-party code emits on every run and that a user cannot act on: fvcore scripts a
#: function with ``torch.jit.script`` at import time, detectron2 calls ``torch.meshgrid`` without
#: ``indexing``. Left on, they would turn every one-line error of a torch tool into five lines.
_THIRD_PARTY_NOISE: tuple[tuple[type[Warning], str], ...] = (
    (FutureWarning, r"`torch\.jit\.script` is deprecated"),
    (UserWarning, r"torch\.meshgrid: in an upcoming release"),
)


def fail(message: str, status: int = 2) -> None:
    """Print a one-line error and exit."""
    print(f"error: {one_line(message)}", file=sys.stderr)
    raise SystemExit(status)


def run_main(main: Callable[[], int | None]) -> None:
    """Run a tool's ``main`` and turn input errors into a one-line message and exit status 2.

    Also one line each: a run that failed on good input (:class:`UWMRunError`, e.g. training
    diverged: status 1), out of GPU memory (status 3), an interrupt (130), and a closed output
    pipe (``tool | head``), which is not an error at all.
    """
    for category, message in _THIRD_PARTY_NOISE:
        warnings.filterwarnings("ignore", message=message, category=category)
    try:
        status = main()
    except INPUT_ERRORS as error:
        fail(str(error))
    except UWMRunError as error:
        fail(str(error), status=1)
    except KeyboardInterrupt:
        fail("interrupted", status=130)
    except BrokenPipeError:
        # The reader went away (e.g. `| head`); silence the flush at exit too.
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115
        raise SystemExit(0) from None
    except RuntimeError as error:
        if not is_out_of_memory(error):
            raise
        fail(
            "out of GPU memory; lower SOLVER.IMS_PER_BATCH (training) or --batch-size "
            "(inference), or the input size INPUT.MIN_SIZE_*",
            status=3,
        )
    raise SystemExit(status or 0)


def tool_parser(
    doc: str | None, parser: argparse.ArgumentParser | None = None
) -> argparse.ArgumentParser:
    """A tool's parser, its ``--help`` taken from the tool's module docstring.

    Args:
        doc: the docstring: a first paragraph that says what the tool does (the description),
            then details and an ``Examples:`` block (the epilog, shown as written).
        parser: a parser to dress instead of a new one (``train_net``'s, detectron2's).

    Raises:
        ValueError: ``doc`` has no ``Examples:`` block (every tool shows how to call it).
    """
    if not doc or "Examples:" not in doc:
        raise ValueError("a tool's docstring needs an 'Examples:' block for its --help")
    summary, _, details = doc.strip().partition("\n\n")
    parser = parser or argparse.ArgumentParser()
    parser.description = summary
    parser.epilog = details
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    return parser


def add_model_arguments(
    parser: argparse.ArgumentParser,
    *,
    ensemble: bool = True,
    inference: bool = True,
    exported: bool = False,
) -> argparse._MutuallyExclusiveGroup:
    """The arguments that name a trained model and run it, the same in every tool.

    ``--config-file`` (with ``ensemble``, or ``--ensemble FILE``: exactly one of them), with
    ``inference`` also ``--tta`` and ``--batch-size``, and the trailing ``KEY VALUE`` config
    overrides as ``opts``, which :func:`parse_tool_args` keeps after every flag. Call it after
    the tool's own positional arguments: the overrides take the rest of the command line.

    Another way to name the model (an exported model's folder, say) belongs here, as one more
    member of the returned group behind a keyword of its own, so that every tool that takes it
    spells and documents it the same way; :func:`predictor_from_args` then builds from it.

    Returns:
        The group of model sources, one of which the command line must give.
    """
    models = parser.add_mutually_exclusive_group(required=True)
    models.add_argument("--config-file", help="the config the model was trained with")
    if ensemble:
        models.add_argument(
            "--ensemble", type=Path, help="YAML file listing configs, checkpoints and weights"
        )
    if exported:
        models.add_argument(
            "--exported",
            nargs="+",
            type=Path,
            metavar="DIR",
            help="folders of tools/export_model.py (several: an ensemble); needs no torch for ONNX",
        )
    if inference:
        parser.add_argument(
            "--tta", action="store_true", help="average with horizontally flipped input"
        )
        parser.add_argument(
            "--batch-size",
            type=int,
            help="slices per forward pass (default: 8 on a GPU; 1 on the CPU: batches are slower)",
        )
    parser.add_argument(
        "opts", nargs=argparse.REMAINDER, default=[], help="config overrides: KEY VALUE ..."
    )
    return models


def check_flag_order(opts: Sequence[str], prog: str = "the tool") -> None:
    """A flag among the overrides would be read as a config key: say so, by name.

    Raises:
        UWMInputError: naming the first flag found after the first ``KEY VALUE`` override.
    """
    flags = [token for token in opts if token.startswith("--")]
    if flags:
        raise UWMInputError(
            f"flag {flags[0]} comes after the KEY VALUE overrides; put every flag before the "
            f"first override (e.g. {prog} --config-file ... {flags[0]} KEY VALUE ...)"
        )


def parse_tool_args(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None = None
) -> argparse.Namespace:
    """``parser.parse_args(argv)``, then :func:`check_flag_order` on the overrides, if any."""
    args = parser.parse_args(argv)
    check_flag_order(getattr(args, "opts", None) or [], parser.prog)
    return args


def predictor_from_args(args: argparse.Namespace) -> Any:
    """The predictor that :func:`add_model_arguments`' flags name: exported models through
    :func:`uwm_d2.deploy.load_exported` (no torch for ONNX), else PyTorch models (imports torch
    and detectron2).

    detectron2's logger is set up for ``uwm_d2`` with fvcore's chatter kept to warnings.
    """
    if getattr(args, "exported", None):  # exported models: no torch, no detectron2
        from uwm_d2.deploy import load_exported

        tta = getattr(args, "tta", False) or None  # None: each export's own setting
        return load_exported(args.exported, tta, getattr(args, "batch_size", None), args.opts)
    from detectron2.utils.logger import setup_logger

    from uwm_d2.inference.ensemble import build_predictor

    setup_logger(name="uwm_d2", abbrev_name="uwm")
    logging.getLogger("fvcore").setLevel(logging.WARNING)
    return build_predictor(
        args.config_file,
        args.opts,
        getattr(args, "ensemble", None),
        tta=getattr(args, "tta", False),
        batch_size=getattr(args, "batch_size", None),
    )


def int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse ``type`` for integers ``>= minimum``: a bad value names its flag (argparse
    prefixes the flag), not the library parameter it becomes."""

    def parse(text: str) -> int:
        import argparse

        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse
