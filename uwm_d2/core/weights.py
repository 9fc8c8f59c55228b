"""What ``MODEL.WEIGHTS`` names: a download (by its prefix) or local checkpoints, comma-separated.

The one reading of the value that training's checks, the trainer and the predictor share.
"""

from __future__ import annotations

from collections.abc import Sequence

from uwm_d2.core.errors import UWMInputError

#: Prefixes of ``MODEL.WEIGHTS`` that name a download rather than a local file.
REMOTE_PREFIXES: tuple[str, ...] = (
    "detectron2://",
    "http://",
    "https://",
    "catalog://",
    "s3://",
    "gs://",
)


def is_remote(weights: str) -> bool:
    """Whether ``weights`` names a download (model zoo, URL, bucket), not a local file."""
    return str(weights).startswith(REMOTE_PREFIXES)


def split_weights(weights: str | Sequence[str], required: bool = True) -> list[str]:
    """``MODEL.WEIGHTS`` may list several checkpoints, comma-separated, for a fold ensemble.

    Raises:
        UWMInputError: nothing is listed, and ``required``.
    """
    items = weights.split(",") if isinstance(weights, str) else list(weights)
    paths = [str(path).strip() for path in items if str(path).strip()]
    if not paths and required:
        raise UWMInputError("no checkpoint given: set MODEL.WEIGHTS (comma-separate an ensemble)")
    return paths
