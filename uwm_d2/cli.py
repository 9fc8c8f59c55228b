"""Shared command-line plumbing: bad input becomes one line on stderr and exit status 2.

Tools call :func:`run_main`; any :class:`~uwm_d2.core.errors.UWMInputError` (or another expected
input problem) is printed as ``error: <message>`` with no traceback. Programming errors still show
their traceback, because hiding those would hide bugs.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from uwm_d2.core.errors import UWMInputError

#: Errors that mean "the user's input is wrong", not "the program is wrong".
INPUT_ERRORS: tuple[type[BaseException], ...] = (UWMInputError, FileNotFoundError, PermissionError)


def fail(message: str, status: int = 2) -> None:
    """Print a one-line error and exit."""
    first_line = " ".join(str(message).split())
    print(f"error: {first_line}", file=sys.stderr)
    raise SystemExit(status)


def run_main(main: Callable[[], int | None]) -> None:
    """Run a tool's ``main`` and turn input errors into a one-line message and exit status 2."""
    try:
        status = main()
    except INPUT_ERRORS as error:
        fail(str(error))
    except KeyboardInterrupt:
        fail("interrupted", status=130)
    raise SystemExit(status or 0)
