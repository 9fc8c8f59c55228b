"""EmptySliceRatioSampler: every annotated slice once per epoch, empties at the configured share."""

from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import pytest

pytest.importorskip("detectron2")

from uwm_d2.data import samplers
from uwm_d2.data.samplers import EmptySliceRatioSampler, empty_count


@pytest.mark.parametrize(
    ("annotated", "empty", "ratio", "expected"),
    [(70, 30, 0.3, 30), (70, 100, 0.3, 30), (70, 10, 0.3, 10), (50, 50, 0.0, 0), (0, 8, 0.3, 8)],
)
def test_empty_count(annotated: int, empty: int, ratio: float, expected: int) -> None:
    assert empty_count(annotated, empty, ratio) == expected


def test_ratio_must_be_below_one() -> None:
    with pytest.raises(ValueError, match="empty_ratio"):
        empty_count(1, 1, 1.0)


def _flags(annotated: int, empty: int, seed: int = 0) -> np.ndarray:
    flags = np.array([False] * annotated + [True] * empty)
    return np.random.default_rng(seed).permutation(flags)


def test_each_epoch_has_every_annotated_slice_and_the_empty_share() -> None:
    flags = _flags(annotated=60, empty=140)
    sampler = EmptySliceRatioSampler(flags, empty_ratio=0.25, seed=3)
    assert sampler.epoch_size == 60 + 20 and sampler.num_empty == 20
    stream = iter(sampler)
    drawn_sets = []
    for _ in range(3):
        epoch = list(itertools.islice(stream, sampler.epoch_size))
        counts = Counter(epoch)
        assert max(counts.values()) == 1  # no index twice within an epoch
        annotated = [i for i in epoch if not flags[i]]
        empties = [i for i in epoch if flags[i]]
        assert sorted(annotated) == sorted(np.flatnonzero(~flags).tolist())
        assert len(empties) == 20 and len(empties) / len(epoch) == pytest.approx(0.25)
        drawn_sets.append(frozenset(empties))
    assert len(set(drawn_sets)) > 1  # a fresh subset of empties each epoch


def test_seeded_and_shuffled() -> None:
    flags = _flags(30, 30)
    first = list(itertools.islice(iter(EmptySliceRatioSampler(flags, 0.5, seed=7)), 100))
    again = list(itertools.islice(iter(EmptySliceRatioSampler(flags, 0.5, seed=7)), 100))
    other = list(itertools.islice(iter(EmptySliceRatioSampler(flags, 0.5, seed=8)), 100))
    assert first == again and first != other
    ordered = list(itertools.islice(iter(EmptySliceRatioSampler(flags, 0.5, False, 7)), 30))
    assert ordered[:30] == sorted(np.flatnonzero(~flags).tolist())  # unshuffled: annotated first


def test_sharded_per_rank(monkeypatch: pytest.MonkeyPatch) -> None:
    flags = _flags(20, 20)
    whole = list(itertools.islice(iter(EmptySliceRatioSampler(flags, 0.3, seed=1)), 40))
    monkeypatch.setattr(samplers.comm, "get_world_size", lambda: 2)
    shards = []
    for rank in (0, 1):
        monkeypatch.setattr(samplers.comm, "get_rank", lambda rank=rank: rank)
        shards.append(list(itertools.islice(iter(EmptySliceRatioSampler(flags, 0.3, seed=1)), 20)))
    assert shards[0] == whole[0::2] and shards[1] == whole[1::2]


def test_from_dataset_counts_crowd_only_slices_as_empty() -> None:
    dicts = [
        {"annotations": [{"iscrowd": 0}]},
        {"annotations": []},
        {"annotations": [{"iscrowd": 1}]},
        {},
    ]
    sampler = EmptySliceRatioSampler.from_dataset(dicts, 0.5, seed=0)
    epoch = list(itertools.islice(iter(sampler), sampler.epoch_size))
    assert sampler.epoch_size == 2 and 0 in epoch
