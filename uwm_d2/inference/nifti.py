"""Segment NIfTI MRI volumes with the submission's predictor: what ``tools/predict_nifti.py`` runs.

The volume goes through exactly the path of ``infer_submit``: the
:class:`~uwm_d2.inference.predictor.VolumePredictor` built by
:func:`~uwm_d2.inference.ensemble.build_predictor` (any model kind, checkpoint ensembles, flip TTA),
its members' 2.5D stacking and percentile window, and the ensemble's merge rule
(:meth:`~uwm_d2.core.merge.MergeRule.volume_masks`). The only difference is where the slices come
from: an in-memory volume, handed to the members' mappers as their ``reader`` (each slice gets a
scan-style name, ``nifti/<input>-<random>/slice_ZZZZ_W_H_PX_PY.png``, that the reader answers).

Steps, per input:

1. :func:`~uwm_d2.core.nifti.load_nifti` (3D only) and, with ``reorient``, turn the axes to LPS,
   the orientation :mod:`uwm_d2.core.nifti` gives the competition's slices (otherwise the array is
   taken as stored: the third axis holds the axial slices, ``data[x, y, k]`` is pixel ``(y, x)``
   of slice ``k``, as ``export_nifti`` writes it).
2. Intensities to ``uint16`` (:func:`~uwm_d2.core.nifti.intensities_to_uint16`: integers in
   ``0..65535`` kept, anything else mapped linearly from its range; the models' percentile window
   does not see the difference).
3. In-plane resampling to the training pixel spacing ``UWM.PIXEL_SPACING_MM`` when the header's
   spacing differs from it by more than :data:`SPACING_TOLERANCE` (so the competition's own
   1.63 mm scans, which training saw as they are, stay untouched). OpenCV, per slice: bilinear
   when enlarging, pixel-area averaging when shrinking (bilinear alone would alias). The slice
   axis is never resampled (the 2.5D offsets count slices; a warning is logged when the slices are
   not about 3 mm apart).
4. ``predict_probabilities`` at that grid; the probability maps are resampled back to the input's
   grid (same interpolation rule) **before** the merge rule cuts them, so edges are as fine as
   the input's pixels (not the staircase of a nearest-neighbour label resize) and the cut and the
   3D clean-up are the ones ``infer_submit`` applies.
5. Labels (:func:`~uwm_d2.core.nifti.label_map`, stomach over small bowel over large bowel) and
   optional per-class masks, written with the input's header: same shape, affine, qform and sform.
"""

from __future__ import annotations

import logging
import math
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from nibabel import orientations

from uwm_d2.core.atomic import check_output_folder, output_folder
from uwm_d2.core.errors import UWMInputError
from uwm_d2.core.ids import CLASSES, SLICE_THICKNESS_MM, format_scan_name
from uwm_d2.core.nifti import (
    NewFiles,
    NiftiVolume,
    intensities_to_uint16,
    label_map,
    load_nifti,
    nifti_image,
    to_dhw,
    to_xyz,
)
from uwm_d2.core.progress import Progress

logger = logging.getLogger(__name__)

#: Relative difference of pixel spacing below which a volume is not resampled.
SPACING_TOLERANCE = 0.10
#: The axes ``--reorient`` turns a volume to: the competition slices' (see uwm_d2.core.nifti).
TRAINING_AXES = ("L", "P", "S")


class VolumeReader:
    """A ``reader`` for the mappers: scan-style names → slices of one in-memory volume.

    The names sit in a folder of their own per reader (``<folder>-<random>``), so that nothing
    that remembers slices by name (a cache) can mix up two volumes given the same name.
    """

    def __init__(self, folder: str, slices: np.ndarray, spacing: tuple[float, float]) -> None:
        depth, height, width = slices.shape
        self.slices = slices
        unique = Path(f"{folder}-{uuid.uuid4().hex[:12]}")
        self.names = [
            str(unique / format_scan_name(index + 1, width, height, *spacing))
            for index in range(depth)
        ]
        self._index = {name: index for index, name in enumerate(self.names)}

    def __call__(self, path: str | os.PathLike) -> np.ndarray:
        index = self._index.get(str(Path(path)))
        if index is None:
            raise UWMInputError(f"slice {str(path)!r} is not part of the volume being predicted")
        return self.slices[index]

    def records(self, case_day: str) -> list[dict[str, Any]]:
        """One record per slice, in order, as :func:`~uwm_d2.inference.volume.scan_records`."""
        height, width = self.slices.shape[1:]
        return [
            {
                "file_name": name,
                "slice_id": f"{case_day}_slice_{index + 1:04d}",
                "case_day": case_day,
                "slice": index + 1,
                "height": int(height),
                "width": int(width),
            }
            for index, name in enumerate(self.names)
        ]


def training_spacing(predictor: Any) -> float:
    """``UWM.PIXEL_SPACING_MM`` of the ensemble (0: never resample); members must agree."""
    values = {float(member.pixel_spacing_mm) for member in predictor.members}
    if len(values) != 1:
        raise UWMInputError(
            f"the ensemble's members were trained at different UWM.PIXEL_SPACING_MM "
            f"{sorted(values)}; set one value for all (KEY VALUE on the command line)"
        )
    (value,) = values
    if not (math.isfinite(value) and value >= 0):
        raise UWMInputError(f"UWM.PIXEL_SPACING_MM must be >= 0, got {value}")
    return value


def network_size(
    shape: tuple[int, int], spacing: tuple[float, float], target: float
) -> tuple[int, int]:
    """``(H, W)`` of a ``shape = (H, W)`` slice with ``spacing = (x, y)`` at the training spacing.

    Unchanged when ``target`` is 0 or both spacings are within :data:`SPACING_TOLERANCE` of it.
    """
    height, width = shape
    spacing_x, spacing_y = spacing
    if target <= 0 or all(abs(s - target) <= SPACING_TOLERANCE * target for s in spacing):
        return height, width
    return max(1, round(height * spacing_y / target)), max(1, round(width * spacing_x / target))


def resize_slices(stack: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``(D, H, W)`` or ``(D, C, H, W)`` → the same at ``size = (H', W')``, slice by slice.

    Bilinear where the grid gets finer, OpenCV's pixel-area average where it gets coarser on both
    axes; a no-op when the size is already right.
    """
    height, width = stack.shape[-2:]
    new_height, new_width = size
    if (new_height, new_width) == (height, width):
        return stack
    shrinking = new_height <= height and new_width <= width
    flag = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    out = np.empty((*stack.shape[:-2], new_height, new_width), dtype=stack.dtype)
    for index in range(stack.shape[0]):
        item = stack[index]
        if item.ndim == 2:
            out[index] = cv2.resize(item, (new_width, new_height), interpolation=flag)
        else:
            # OpenCV resizes (H, W, C) channel-last images; it drops a trailing axis of size 1.
            resized = cv2.resize(
                np.ascontiguousarray(item.transpose(1, 2, 0)),
                (new_width, new_height),
                interpolation=flag,
            )
            out[index] = resized.reshape(new_height, new_width, -1).transpose(2, 0, 1)
    return out


@dataclass
class Orientation:
    """How ``--reorient`` turned a volume's axes, to turn the results back."""

    forward: np.ndarray  # nibabel orientation: stored axes → training axes
    backward: np.ndarray  # training axes → stored axes

    @classmethod
    def of(cls, volume: NiftiVolume) -> Orientation:
        stored = orientations.io_orientation(volume.affine)
        if np.isnan(stored).any():
            raise UWMInputError(
                f"NIfTI file {str(volume.path)!r}: its affine gives no orientation to turn "
                "(leave out --reorient)"
            )
        target = orientations.axcodes2ornt(TRAINING_AXES)
        return cls(
            orientations.ornt_transform(stored, target), orientations.ornt_transform(target, stored)
        )

    def apply(self, data: np.ndarray) -> np.ndarray:
        return orientations.apply_orientation(data, self.forward)

    def undo(self, data: np.ndarray) -> np.ndarray:
        return orientations.apply_orientation(data, self.backward)

    def zooms(self, zooms: Sequence[float]) -> tuple[float, float, float]:
        turned = [0.0, 0.0, 0.0]
        for axis, (new_axis, _flip) in enumerate(self.forward):
            turned[int(new_axis)] = float(zooms[axis])
        return tuple(turned)


def predict_volume(
    predictor: Any, volume: NiftiVolume, reorient: bool = False, name: str = "volume"
) -> np.ndarray:
    """Per-class masks of one NIfTI volume, on its own grid.

    Args:
        predictor: a :class:`~uwm_d2.inference.predictor.VolumePredictor`.
        volume: a volume of :func:`~uwm_d2.core.nifti.load_nifti`.
        reorient: turn the axes to :data:`TRAINING_AXES` first (and the masks back).
        name: shown in the slice names the reader answers to.

    Returns:
        ``(C, x, y, z)`` bool masks in the file's own voxel order (:data:`CLASSES` order).
    """
    shown = f"NIfTI file {str(volume.path)!r}"
    data, zooms = volume.data, volume.zooms
    orientation = Orientation.of(volume) if reorient else None
    if orientation is not None:
        data, zooms = orientation.apply(data), orientation.zooms(zooms)
    slices = to_dhw(intensities_to_uint16(data, shown))
    spacing = (zooms[0], zooms[1])
    if abs(zooms[2] - SLICE_THICKNESS_MM) > SPACING_TOLERANCE * SLICE_THICKNESS_MM:
        logger.warning(
            f"{shown}: slices are {zooms[2]:g} mm apart; the models were trained on 3 mm slices "
            "(their 2.5D neighbours count slices, not mm)"
        )
    native = slices.shape[1:]
    target = training_spacing(predictor)
    size = network_size(native, spacing, target)
    grid_spacing = spacing if size == native else (target, target)
    reader = VolumeReader(f"nifti/{name}", resize_slices(slices, size), grid_spacing)
    probabilities = predictor.predict_probabilities(reader.records("case0_day0"), reader)
    masks = predictor.rule.volume_masks(resize_slices(probabilities, native))  # (D, C, H, W)
    per_class = np.stack([to_xyz(masks[:, index]) for index in range(masks.shape[1])])
    if orientation is not None:
        per_class = np.stack([orientation.undo(mask) for mask in per_class])
    return per_class


def input_name(path: Path) -> str:
    """The name an input's outputs start with: the file name without ``.nii.gz`` / ``.nii``."""
    for suffix in (".nii.gz", ".nii"):
        if path.name.endswith(suffix):
            return path.name[: -len(suffix)]
    return path.stem


@dataclass(frozen=True)
class PredictSummary:
    """What :func:`predict_nifti_files` wrote."""

    out: Path
    outputs: tuple[Path, ...]
    volumes: int
    slices: int


@dataclass(frozen=True)
class CheckedInput:
    """An input volume that passed :func:`check_inputs`."""

    path: Path
    name: str
    slices: int


def check_inputs(inputs: Sequence[str | os.PathLike], out: str | os.PathLike) -> list[CheckedInput]:
    """Check every input (read fully) and the output folder before any model loads.

    Raises:
        UWMInputError: a missing or bad NIfTI file (see :func:`~uwm_d2.core.nifti.load_nifti`),
            NaN voxels, two inputs whose outputs would have the same name, or an output folder
            that cannot be made.
    """
    check_output_folder(out)
    if not inputs:
        raise UWMInputError("no input volume given (--input SCAN.nii.gz)")
    checked: list[CheckedInput] = []
    seen: dict[str, Path] = {}
    for path in map(Path, inputs):
        volume = load_nifti(path)
        intensities_to_uint16(volume.data, f"NIfTI file {str(path)!r}")
        name = input_name(path)
        if name in seen:
            raise UWMInputError(
                f"inputs {str(seen[name])!r} and {str(path)!r} would both write {name}_seg.nii.gz"
            )
        seen[name] = path
        checked.append(CheckedInput(path, name, int(volume.data.shape[2])))
    return checked


def predict_nifti_files(
    predictor: Any,
    inputs: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    per_class: bool = False,
    reorient: bool = False,
    progress: bool = True,
) -> PredictSummary:
    """Write ``out/<input name>_seg.nii.gz`` (and ``_<class>`` masks) for each input volume.

    Raises:
        UWMInputError: see :func:`check_inputs`; a failure after the first file removes the files
            this run created (and the output folder, if it created that).
    """
    checked = check_inputs(inputs, out)
    total = sum(item.slices for item in checked)
    written = NewFiles()
    outputs = []
    with output_folder(out) as folder:
        try:
            with Progress(
                total,
                "predict",
                "slice",
                enabled=progress,
                group_unit="volume",
                group_total=len(checked),
            ) as bar:
                for item in checked:
                    volume = load_nifti(item.path)
                    masks = predict_volume(predictor, volume, reorient=reorient, name=item.name)
                    header = volume.image.header
                    target = folder / f"{item.name}_seg.nii.gz"
                    labels = label_map(masks).reshape(volume.shape)
                    written.write(target, nifti_image(labels, volume.affine, "labels", header))
                    outputs.append(target)
                    if per_class:
                        for class_index, class_name in enumerate(CLASSES):
                            mask = masks[class_index].reshape(volume.shape)
                            image = nifti_image(mask, volume.affine, "mask", header)
                            written.write(folder / f"{item.name}_{class_name}.nii.gz", image)
                    bar.update(item.slices)
        except BaseException:
            written.remove()
            raise
    return PredictSummary(Path(out), tuple(outputs), len(checked), total)
