"""Whole case-days through an ensemble: batches, 2.5D neighbours, flip TTA and averaging (no torch).

:class:`EnsemblePredictor` is the loop every predictor shares: the PyTorch one
(:class:`~uwm_d2.inference.predictor.VolumePredictor`) and the exported-model one
(:class:`~uwm_d2.deploy.DeployPredictor`) differ only in their members (:class:`Member`), which
turn slice records into network inputs and run one network on them. Here, once for both:

* a case-day's slices go through in batches; each member gives every slice its own 2.5D
  channel files (:func:`~uwm_d2.data.inputs.neighbor_files` with the member's offsets);
* with flip TTA every network also sees the horizontally flipped input, and its maps are flipped
  back; a member's maps are the mean over its networks and flips;
* members are averaged by their weights, and the ensemble's merge rule cuts the case-day
  (:meth:`~uwm_d2.core.merge.MergeRule.volume_masks`, with the 3D clean-up).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from uwm_d2.core.errors import UWMInputError
from uwm_d2.core.merge import MergeRule
from uwm_d2.data.inputs import group_by_case_day, neighbor_files

Reader = Callable[[Path], np.ndarray]


def flip_passes(tta: bool) -> tuple[bool, ...]:
    """The passes of every network: as is, and horizontally flipped with TTA."""
    return (False, True) if tta else (False,)


class Member(Protocol):
    """One ensemble member: one config's (or one export's) networks, its input rule and weight."""

    weight: float
    name: str
    offsets: tuple[int, ...]
    rule: MergeRule
    pixel_spacing_mm: float

    @property
    def network_count(self) -> int:
        """How many networks (checkpoints) the member averages."""

    def prepare(self, records: Sequence[dict], reader: Reader | None) -> Any:
        """The network inputs of ``records`` (each with its ``neighbor_files``)."""

    def run(self, network: int, inputs: Any, flip: bool) -> np.ndarray:
        """``(B, C, H, W)`` maps of network ``network`` on ``inputs`` (flipped first if ``flip``)
        at each scan's size, still in the flipped frame."""


class EnsemblePredictor:
    """Predict per-class masks (or probabilities) for whole case-days with an ensemble.

    Args:
        members: one or more :class:`Member`.
        rule: the ensemble's merge rule (cut and 3D clean-up); the first member's by default.
        tta: also run every network on the horizontally flipped slices and average.
        batch_size: slices per forward pass (>= 1).
    """

    def __init__(
        self,
        members: Sequence[Member],
        rule: MergeRule | None = None,
        tta: bool = False,
        batch_size: int = 1,
    ) -> None:
        if not members:
            raise UWMInputError("an ensemble needs at least one member")
        if batch_size < 1:
            raise UWMInputError(f"batch size must be at least 1, got {batch_size}")
        self.members = list(members)
        self.rule = rule or self.members[0].rule
        self.tta = tta
        self.batch_size = batch_size

    def member_maps(
        self, member: Member, records: Sequence[dict], reader: Reader | None = None
    ) -> np.ndarray:
        """``(B, C, H, W)`` mean probability maps of one member over TTA and its networks."""
        inputs = member.prepare(records, reader)
        flips = flip_passes(self.tta)
        total: np.ndarray | None = None
        for network in range(member.network_count):
            for flip in flips:
                maps = member.run(network, inputs, flip)
                maps = maps[..., ::-1] if flip else maps
                total = maps if total is None else total + maps
        return total / (member.network_count * len(flips))

    def predict_probabilities(
        self, records: Sequence[dict], reader: Reader | None = None
    ) -> np.ndarray:
        """Probabilities of one case-day: ``(D, C, H, W)`` float32, slices in the records' order.

        ``records`` are one case-day's slices sorted by slice number, each with ``file_name``,
        ``height`` and ``width`` (see :func:`~uwm_d2.inference.volume.scan_records`); every
        member takes its own 2.5D neighbours from them. ``reader`` (default: the members' own,
        16-bit PNG files) reads one ``file_name`` into an ``(H, W)`` array, e.g. a slice of an
        in-memory NIfTI volume.
        """
        paths = [record["file_name"] for record in records]
        weights = sum(member.weight for member in self.members)
        chunks = []
        for start in range(0, len(records), self.batch_size):
            batch = records[start : start + self.batch_size]
            average: np.ndarray | None = None
            for member in self.members:
                with_neighbours = [
                    {**record, "neighbor_files": neighbor_files(paths, start + i, member.offsets)}
                    for i, record in enumerate(batch)
                ]
                maps = self.member_maps(member, with_neighbours, reader)
                maps *= member.weight / weights
                average = maps if average is None else average + maps
            chunks.append(average.astype(np.float32, copy=False))
        return np.concatenate(chunks)

    def predict_case_day(self, records: Sequence[dict], reader: Reader | None = None) -> np.ndarray:
        """Masks of one case-day: ``(D, C, H, W)`` bool, cut and cleaned by the ensemble's rule."""
        return self.rule.volume_masks(self.predict_probabilities(records, reader))


def scan_records(data_root: str | os.PathLike, scans: Any) -> dict[str, list[dict]]:
    """Slice records per case-day (sorted by slice) from an ``index_scans`` frame."""
    root = Path(data_root)
    records = [
        {
            "file_name": str(root / row.path),
            "slice_id": row.id,
            "case_day": row.case_day,
            "slice": int(row.slice),
            "height": int(row.height),
            "width": int(row.width),
        }
        for row in scans.itertuples(index=False)
    ]
    return {case_day: list(group) for case_day, group in group_by_case_day(records).items()}
