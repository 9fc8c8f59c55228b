"""The project's two expected failures, so tools can print them as one-line messages.

:class:`UWMInputError`: the input is bad (exit status 2). :class:`UWMRunError`: the input was fine
but the run failed, e.g. training diverged (exit status 1). :func:`one_line` is the one rule that
turns any message into the single line those errors carry; :func:`is_out_of_memory` recognises
torch's GPU out-of-memory error without importing torch.
"""

from __future__ import annotations


class UWMInputError(ValueError):
    """Bad input from the user: a malformed id, RLE, CSV, scan file or path.

    The message must name the culprit (the row id, the file or the string) and fit on one line;
    the command-line tools print it as ``error: <message>`` and exit with status 2.
    """


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


class UWMRunError(RuntimeError):
    """A run that failed although its input was fine (e.g. training diverged).

    Like :class:`UWMInputError` the message is one line naming what happened and what to do; the
    tools print it as ``error: <message>`` and exit with status 1, not 2, so scripts can tell "fix
    the input" from "the run failed".
    """


class TrainingDivergedError(UWMRunError):
    """The loss became NaN/Inf: names the iteration, the last good checkpoint and the remedy."""


def one_line(text: object, limit: int | None = None) -> str:
    """``text`` (a message or an exception) as one line: white space runs folded to one space.

    Args:
        text: anything ``str`` accepts.
        limit: cut a longer line to this many characters, the last three ``...``.
    """
    line = " ".join(str(text).split())
    if limit is not None and len(line) > limit:
        return line[: limit - 3] + "..."
    return line


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is torch's GPU out-of-memory error (recognised by name and message)."""
    return type(error).__name__ == "OutOfMemoryError" or "CUDA out of memory" in str(error)
