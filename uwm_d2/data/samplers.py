"""``EmptySliceRatioSampler``: every annotated slice each epoch, plus a fresh share of empty ones.

About 57% of the training slices show no organ. They are needed (a model that never sees an empty
slice predicts organs everywhere), but at their natural share they dilute the positives. Each epoch
this sampler takes every annotated slice once and a new random subset of the empty slices sized
so that empties make up ``empty_ratio`` of the epoch (all of them when there are too few), shuffles
the lot and moves on to the next epoch: an infinite stream, like detectron2's ``TrainingSampler``,
seeded and sharded over the ranks of a distributed run in the same way (every rank draws the same
stream from the shared seed and takes every ``world_size``-th index).

Selected in a config by ``DATALOADER.SAMPLER_TRAIN: EmptySliceRatioSampler``, with
``UWM.EMPTY_SLICE_RATIO``.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from detectron2.utils import comm
from torch.utils.data.sampler import Sampler


def empty_count(annotated: int, empty: int, empty_ratio: float) -> int:
    """Empty slices per epoch so that they are ``empty_ratio`` of it (at most ``empty``).

    ``round(empty_ratio * annotated / (1 - empty_ratio))``; all empties when nothing is annotated
    (an epoch must hold something).
    """
    if not 0.0 <= empty_ratio < 1.0:
        raise ValueError(f"empty_ratio must be in [0, 1), got {empty_ratio}")
    if annotated == 0:
        return empty
    return min(empty, round(empty_ratio * annotated / (1.0 - empty_ratio)))


class EmptySliceRatioSampler(Sampler):
    """Infinite index stream: per epoch all annotated indices and a random share of empty ones.

    Args:
        is_empty: one flag per dataset index, True for a slice without annotations.
        empty_ratio: share of empty slices in each epoch, in ``[0, 1)``.
        shuffle: shuffle each epoch (off: annotated in order, then the drawn empties in order).
        seed: the random seed; ``None`` takes one shared by all ranks (as ``TrainingSampler``).
    """

    def __init__(
        self,
        is_empty: Sequence[bool],
        empty_ratio: float,
        shuffle: bool = True,
        seed: int | None = None,
    ) -> None:
        flags = np.asarray(is_empty, dtype=bool)
        if flags.size == 0:
            raise ValueError("EmptySliceRatioSampler needs a non-empty dataset")
        self._annotated = np.flatnonzero(~flags)
        self._empty = np.flatnonzero(flags)
        self._num_empty = empty_count(len(self._annotated), len(self._empty), empty_ratio)
        self._shuffle = shuffle
        self._seed = int(comm.shared_random_seed() if seed is None else seed)
        self._rank = comm.get_rank()
        self._world_size = comm.get_world_size()

    @classmethod
    def from_dataset(
        cls, dataset_dicts: Sequence[dict[str, Any]], empty_ratio: float, **kwargs: Any
    ) -> EmptySliceRatioSampler:
        """Build from detectron2 dataset dicts: empty = no (non-crowd) annotation."""
        is_empty = [
            not any(not ann.get("iscrowd", 0) for ann in record.get("annotations", []))
            for record in dataset_dicts
        ]
        return cls(is_empty, empty_ratio, **kwargs)

    @property
    def num_empty(self) -> int:
        """Empty slices drawn per epoch."""
        return self._num_empty

    @property
    def epoch_size(self) -> int:
        """Indices per epoch: every annotated slice plus the empties drawn."""
        return len(self._annotated) + self._num_empty

    def __iter__(self) -> Iterator[int]:
        yield from itertools.islice(self._infinite_indices(), self._rank, None, self._world_size)

    def _infinite_indices(self) -> Iterator[int]:
        rng = np.random.default_rng(self._seed)
        while True:
            drawn = rng.choice(self._empty, size=self._num_empty, replace=False)
            epoch = np.concatenate([self._annotated, np.sort(drawn)])
            if self._shuffle:
                epoch = rng.permutation(epoch)
            yield from (int(index) for index in epoch)
