"""The project's two expected failures, so tools can print them as one-line messages.

:class:`UWMInputError`: the input is bad (exit status 2). :class:`UWMRunError`: the input was fine
but the run failed, e.g. training diverged (exit status 1).
"""


class UWMInputError(ValueError):
    """Bad input from the user: a malformed id, RLE, CSV, scan file or path.

    The message must name the culprit (the row id, the file or the string) and fit on one line;
    the command-line tools print it as ``error: <message>`` and exit with status 2.
    """


class UWMRunError(RuntimeError):
    """A run that failed although its input was fine (e.g. training diverged).

    Like :class:`UWMInputError` the message is one line naming what happened and what to do; the
    tools print it as ``error: <message>`` and exit with status 1, not 2, so scripts can tell "fix
    the input" from "the run failed".
    """


class TrainingDivergedError(UWMRunError):
    """The loss became NaN/Inf: names the iteration, the last good checkpoint and the remedy."""
