"""``MODEL.WEIGHTS``: downloads told from local files, comma-separated ensembles split."""

from __future__ import annotations

import pytest

from uwm_d2.core.errors import UWMInputError
from uwm_d2.core.weights import is_remote, split_weights


@pytest.mark.parametrize(
    "weights",
    [
        "detectron2://ImageNetPretrained/MSRA/R-50.pkl",
        "https://dl.fbaipublicfiles.com/detectron2/model_final.pkl",
        "http://example.invalid/w.pth",
        "catalog://ImageNetPretrained/MSRA/R-50",
        "s3://bucket/w.pth",
        "gs://bucket/w.pth",
    ],
)
def test_downloads_are_remote(weights: str) -> None:
    assert is_remote(weights)


@pytest.mark.parametrize("weights", ["model_best.pth", "out/https/w.pth", "", "a.pth,b.pth"])
def test_local_paths_are_not_remote(weights: str) -> None:
    assert not is_remote(weights)


def test_split_weights_strips_and_drops_empty_items() -> None:
    assert split_weights(" a.pth, b.pth ,,") == ["a.pth", "b.pth"]
    assert split_weights(["a.pth", " "]) == ["a.pth"]
    with pytest.raises(UWMInputError, match="no checkpoint given"):
        split_weights(" , ")
    assert split_weights(" , ", required=False) == []
