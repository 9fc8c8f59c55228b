"""Shared command-line plumbing: bad input becomes one line on stderr and exit status 2.

Tools call :func:`run_main`; any :class:`~uwm_d2.core.errors.UWMInputError` (or another expected
input problem) is printed as ``error: <message>`` with no traceback. Programming errors still show
their traceback, because hiding those would hide bugs.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable

from uwm_d2.core.errors import UWMInputError, UWMRunError

# Before torch loads: OpenMP threads that busy-wait for work stall each other whenever another
# process (a data-loader worker, a second job) holds a core. Measured on the 2-core CPU: 9 s per
# training iteration with the default policy against 1.4 s with PASSIVE. Users can still override.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

#: Errors that mean "the user's input is wrong", not "the program is wrong": bad content, or a path
#: that is missing, not allowed, or a file where a folder must be (``OUTPUT_DIR`` under a file).
#: The OS errors' messages name the path.
INPUT_ERRORS: tuple[type[BaseException], ...] = (
    UWMInputError,
    FileNotFoundError,
    PermissionError,
    NotADirectoryError,
    IsADirectoryError,
)

#: Warnings that third-party code emits on every run and that a user cannot act on: fvcore scripts a
#: function with ``torch.jit.script`` at import time, detectron2 calls ``torch.meshgrid`` without
#: ``indexing``. Left on, they would turn every one-line error of a torch tool into five lines.
_THIRD_PARTY_NOISE: tuple[tuple[type[Warning], str], ...] = (
    (FutureWarning, r"`torch\.jit\.script` is deprecated"),
    (UserWarning, r"torch\.meshgrid: in an upcoming release"),
)


def fail(message: str, status: int = 2) -> None:
    """Print a one-line error and exit."""
    first_line = " ".join(str(message).split())
    print(f"error: {first_line}", file=sys.stderr)
    raise SystemExit(status)


def _is_out_of_memory(error: BaseException) -> bool:
    """torch's CUDA out-of-memory error, recognised without importing torch here."""
    return type(error).__name__ == "OutOfMemoryError" or "CUDA out of memory" in str(error)


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
        if not _is_out_of_memory(error):
            raise
        fail(
            "out of GPU memory; lower SOLVER.IMS_PER_BATCH (training) or --batch-size "
            "(inference), or the input size INPUT.MIN_SIZE_*",
            status=3,
        )
    raise SystemExit(status or 0)


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
