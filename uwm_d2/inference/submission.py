"""Turn per-slice class masks into the competition's ``id,class,predicted`` rows and write them.

Row order follows the sample submission exactly when one is given (that is what the scorer
expects); without one, every predicted slice gets its three class rows, sorted by id then class.
Masks are encoded with :func:`uwm_d2.core.rle.rle_encode` at the scan's own ``(H, W)``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from uwm_d2.core.atomic import atomic_path
from uwm_d2.core.ids import CLASSES, parse_slice_id
from uwm_d2.core.layout_reader import read_label_csv
from uwm_d2.core.rle import rle_encode

SUBMISSION_COLUMNS = ("id", "class", "predicted")


def read_sample_submission(path: str | os.PathLike) -> pd.DataFrame:
    """Read and validate a sample submission (``id,class,predicted``); zero rows is allowed."""
    return read_label_csv(path, value_column="predicted")


def encode_class_masks(class_masks: Mapping[str, np.ndarray]) -> dict[tuple[str, str], str]:
    """``{slice_id: (3, H, W) bool}`` → ``{(slice_id, class): rle}`` for every class."""
    encoded: dict[tuple[str, str], str] = {}
    for slice_id, masks in class_masks.items():
        if masks.shape[0] != len(CLASSES):
            raise ValueError(f"{slice_id}: expected {len(CLASSES)} class masks, got {masks.shape}")
        for class_index, class_name in enumerate(CLASSES):
            encoded[(slice_id, class_name)] = rle_encode(masks[class_index])
    return encoded


def build_submission(
    encoded: Mapping[tuple[str, str], str], sample: pd.DataFrame | None = None
) -> pd.DataFrame:
    """Arrange encoded masks as submission rows.

    Args:
        encoded: ``{(slice_id, class): rle}``.
        sample: the sample submission's rows; when given, the output has exactly its rows in its
            order (a row we have no prediction for stays empty; the caller checks coverage).

    Returns:
        A frame with columns ``id, class, predicted``.
    """
    if sample is not None:
        keys: Iterable[tuple[str, str]] = zip(sample["id"], sample["class"], strict=True)
        keys = list(keys)
    else:
        class_rank = {name: rank for rank, name in enumerate(CLASSES)}
        keys = sorted(encoded, key=lambda key: (parse_slice_id(key[0]), class_rank[key[1]]))
    rows = [(slice_id, name, encoded.get((slice_id, name), "")) for slice_id, name in keys]
    return pd.DataFrame(rows, columns=list(SUBMISSION_COLUMNS))


def write_submission(frame: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write the rows to ``path`` atomically (whole or not at all)."""
    with atomic_path(path) as tmp_path:
        frame.to_csv(tmp_path, index=False, columns=list(SUBMISSION_COLUMNS))
    return Path(path)
