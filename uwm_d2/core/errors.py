"""The one exception type for bad user input, so tools can print it as a one-line message."""


class UWMInputError(ValueError):
    """Bad input from the user: a malformed id, RLE, CSV, scan file or path.

    The message must name the culprit (the row id, the file or the string) and fit on one line;
    the command-line tools print it as ``error: <message>`` and exit with status 2.
    """
