"""NIfTI volumes of the competition's case-days and back: what radiologists' tools open.

Everything here is numpy and nibabel (no torch): the layout and header conventions, strict reading,
the label map and its inverse to competition RLE rows, and organ volumes in mL. The job that
exports a data root's case-days with them (``tools/export_nifti.py``) is
:mod:`uwm_d2.data.nifti_export`.

Layout. A case-day's ``(D, H, W)`` volume (slices in slice-number order, each slice as its PNG
holds it) is stored in NIfTI's ``(x, y, z)`` order, shape ``(W, H, D)``:
``data[x, y, k] = slice_k[y, x]``, i.e. x runs along the PNG's columns, y along its rows, z along
the slice numbers. Voxel sizes are ``(PX, PY, 3.0)`` mm (file name spacing; 3 mm slices).

Affine. ``diag(-PX, -PY, 3.0, 1)``, written as both the qform and the sform (code 2, "aligned"),
origin at voxel ``(0, 0, 0)``. nibabel's ``aff2axcodes`` reads it as **LPS**: x toward the patient's
left, y toward posterior, z toward superior. That is the DICOM pixel grid of a standard axial image
(anterior at the top, patient's right on the left of the picture), so viewers in radiological
convention (ITK-SNAP, 3D Slicer, FSLeyes) show every slice the way its PNG looks. The competition
gives **no patient orientation**: the labels are what the PNGs look like (slice numbers are taken
to run toward the head), not a measured orientation, and the world coordinates are not scanner
coordinates. Tools that reorient to RAS (``nib.as_closest_canonical``) flip x and y.

Labels. ``_seg`` files are ``uint8``: 0 background, 1 large bowel, 2 small bowel, 3 stomach
(:data:`LABEL_VALUES`). Where the competition's masks overlap, the **higher label wins**:
stomach over small bowel over large bowel (:data:`OVERLAP_PRIORITY`). Overlaps are thin bands
where two hand-drawn contours meet; the organ with the fewest labelled slices in train (stomach
8,627 rows, small bowel 11,201, large bowel 14,085) is the one a lower-priority neighbour would
erase most of, and "the highest value wins" is ``np.maximum``, a rule anyone can redo. The
per-class masks (``_<class>`` files, 0/1) are exact and keep every overlap.

Intensities. Scans are written as they are (``uint16``). Reading a scan from any NIfTI
(:func:`intensities_to_uint16`): values that are all integers in ``0..65535`` (whatever the
dtype: ``int16`` MRI, integral floats) are kept; anything else (negative values, larger values,
fractions) is mapped linearly from its ``min..max`` onto ``0..65535`` and rounded. The models'
normalization is a percentile window per 2.5D stack, which a positive linear map does not change,
so the map only costs a rounding of 1/65535 of the range. NaN or infinite voxels are an error.
"""

from __future__ import annotations

import gzip
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd

from uwm_d2.core.atomic import atomic_path, atomic_write_text
from uwm_d2.core.errors import UWMInputError, one_line
from uwm_d2.core.ids import CLASSES, SLICE_THICKNESS_MM, format_slice_id, parse_case_day
from uwm_d2.core.rle import rle_encode

#: Value of each class in a label map (``_seg`` file); 0 is background.
LABEL_VALUES: dict[str, int] = {name: index + 1 for index, name in enumerate(CLASSES)}
#: Which class a voxel gets where masks overlap, first wins: the highest label value.
OVERLAP_PRIORITY: tuple[str, ...] = ("stomach", "small_bowel", "large_bowel")
#: NIfTI qform/sform code of the written files: 2, "aligned" (not scanner coordinates).
XFORM_CODE = 2
#: gzip level of written files: nibabel's own default for ``.nii.gz`` (fast; masks shrink anyway).
COMPRESS_LEVEL = 1
#: ``intent_code`` of label maps and masks (NIFTI_INTENT_LABEL): viewers show them as labels.
_INTENT_LABEL = "label"
_UINT16_MAX = 65535


# ---------------------------------------------------------------------------------------------
# Layout, affine, labels


def case_day_affine(
    spacing_x: float, spacing_y: float, thickness: float = SLICE_THICKNESS_MM
) -> np.ndarray:
    """The affine of an exported case-day: ``diag(-PX, -PY, thickness, 1)`` (LPS, see above)."""
    return np.diag([-float(spacing_x), -float(spacing_y), float(thickness), 1.0])


def to_xyz(volume: np.ndarray) -> np.ndarray:
    """``(D, H, W)`` slices → NIfTI's ``(W, H, D)`` data: ``data[x, y, k] = volume[k, y, x]``."""
    volume = np.asarray(volume)
    if volume.ndim != 3:
        raise ValueError(f"expected a (D, H, W) volume, got shape {volume.shape}")
    return np.transpose(volume, (2, 1, 0))


def to_dhw(data: np.ndarray) -> np.ndarray:
    """NIfTI's ``(W, H, D)`` data → ``(D, H, W)`` slices; the inverse of :func:`to_xyz`."""
    data = np.asarray(data)
    if data.ndim != 3:
        raise ValueError(f"expected (x, y, z) data, got shape {data.shape}")
    return np.transpose(data, (2, 1, 0))


def label_map(masks: np.ndarray) -> np.ndarray:
    """``(C, ...)`` per-class masks (:data:`CLASSES` order) → ``uint8`` labels, overlaps resolved.

    Classes are painted from the lowest priority to the highest, so the first class of
    :data:`OVERLAP_PRIORITY` wins where masks overlap.
    """
    masks = np.asarray(masks)
    if masks.shape[0] != len(CLASSES):
        raise ValueError(f"expected {len(CLASSES)} class masks first, got shape {masks.shape}")
    labels = np.zeros(masks.shape[1:], dtype=np.uint8)
    for name in reversed(OVERLAP_PRIORITY):
        labels[masks[CLASSES.index(name)] != 0] = LABEL_VALUES[name]
    return labels


def class_masks(labels: np.ndarray) -> np.ndarray:
    """``uint8`` labels → ``(C, ...)`` bool masks (:data:`CLASSES` order); the inverse of
    :func:`label_map` where nothing overlapped."""
    labels = np.asarray(labels)
    return np.stack([labels == LABEL_VALUES[name] for name in CLASSES])


# ---------------------------------------------------------------------------------------------
# Writing


def nifti_image(
    data_xyz: np.ndarray,
    affine: np.ndarray,
    kind: str,
    header: nib.Nifti1Header | None = None,
) -> nib.Nifti1Image:
    """A NIfTI-1 image of ``data_xyz`` (already in ``(x, y, z)`` order) of one ``kind``.

    Args:
        data_xyz: the voxels.
        affine: voxel → world; written as qform and sform (code :data:`XFORM_CODE`). Ignored
            when ``header`` is given: the header's own qform and sform are kept.
        kind: ``"scan"`` (``uint16``), ``"labels"`` (``uint8`` 0..3) or ``"mask"`` (``uint8`` 0/1).
        header: a header to copy (an input volume's: its qform and sform, codes included, are kept
            exactly, so a prediction lands on its input's grid).
    """
    dtypes = {"scan": np.uint16, "labels": np.uint8, "mask": np.uint8}
    if kind not in dtypes:
        raise ValueError(f"unknown NIfTI kind {kind!r}")
    data = np.asarray(data_xyz).astype(dtypes[kind], copy=False)
    if header is None:
        image = nib.Nifti1Image(data, affine)
        image.set_qform(affine, code=XFORM_CODE)
        image.set_sform(affine, code=XFORM_CODE)
        image.header.set_xyzt_units("mm")
    else:
        source = header.copy()
        image = nib.Nifti1Image(data, None, header=source)
        qform, qform_code = source.get_qform(coded=True)
        sform, sform_code = source.get_sform(coded=True)
        image.set_qform(qform, code=int(qform_code))
        image.set_sform(sform, code=int(sform_code))
        image.header.set_intent("none")
    image.header.set_data_dtype(dtypes[kind])
    # Stored values are the values: no scaling from a copied header.
    image.header.set_slope_inter(1.0, 0.0)
    if kind == "scan":
        image.header["cal_min"], image.header["cal_max"] = 0, 0
    else:
        image.header.set_intent(_INTENT_LABEL)
        image.header["cal_min"] = 0
        image.header["cal_max"] = max(LABEL_VALUES.values()) if kind == "labels" else 1
    return image


def nifti_bytes(image: nib.Nifti1Image) -> bytes:
    """The ``.nii.gz`` file of ``image`` (gzip with no time stamp: equal data, equal bytes)."""
    return gzip.compress(image.to_bytes(), compresslevel=COMPRESS_LEVEL, mtime=0)


def write_nifti(path: str | os.PathLike, image: nib.Nifti1Image) -> None:
    """Write ``image`` as ``.nii.gz`` to ``path``, atomically.

    Encoded in memory and written to the temp file as bytes: nibabel picks the format from the
    file name's extension, which the atomic temp file does not have.
    """
    with atomic_path(path) as tmp_path:
        tmp_path.write_bytes(nifti_bytes(image))


class NewFiles:
    """Files one run wrote that did not exist before, so that a failed run can remove them.

    Every file is written whole (atomically); after a failure the files this run created are
    deleted again, and files it replaced keep their new, complete content.
    """

    def __init__(self) -> None:
        self.paths: list[Path] = []

    def write(self, path: Path, image: nib.Nifti1Image) -> None:
        existed = path.exists()
        write_nifti(path, image)
        if not existed:
            self.paths.append(path)

    def write_text(self, path: Path, text: str) -> None:
        existed = path.exists()
        atomic_write_text(path, text)
        if not existed:
            self.paths.append(path)

    def remove(self) -> None:
        for path in self.paths:
            path.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------
# Reading


@dataclass
class NiftiVolume:
    """A 3D NIfTI file, read and checked.

    ``data`` is the voxel array in the file's ``(x, y, z)`` order (scaling applied, trailing axes
    of size 1 dropped); ``shape`` is the file's own shape (with those axes), for writing results
    back on the same grid.
    """

    path: Path
    image: nib.Nifti1Image
    data: np.ndarray
    shape: tuple[int, ...]

    @property
    def affine(self) -> np.ndarray:
        return self.image.affine

    @property
    def zooms(self) -> tuple[float, float, float]:
        """Voxel sizes ``(x, y, z)`` from the header (mm for the usual ``xyzt_units``)."""
        return tuple(float(zoom) for zoom in self.image.header.get_zooms()[:3])


def load_nifti(path: str | os.PathLike, what: str = "NIfTI file") -> NiftiVolume:
    """Read a 3D NIfTI-1/2 file (``.nii`` or ``.nii.gz``) strictly.

    Raises:
        UWMInputError: the file is missing, not NIfTI (another format, a renamed PNG, a corrupt
            or truncated file), not 3D (a 4D series; trailing axes of size 1 are accepted), or
            has a non-positive voxel size, or non-numeric voxels. The message names the file.
    """
    path = Path(path)
    shown = f"{what} {str(path)!r}"
    if not path.is_file():
        raise UWMInputError(f"{shown} {'is a folder' if path.is_dir() else 'does not exist'}")
    if not path.name.endswith((".nii", ".nii.gz")):
        raise UWMInputError(f"{shown} is not a NIfTI file (expected a .nii or .nii.gz name)")
    try:
        image = nib.load(str(path))
    except Exception as error:  # nibabel and gzip raise many types for a bad file
        raise UWMInputError(f"{shown} is not a readable NIfTI file ({_reason(error)})") from None
    if not isinstance(image, nib.Nifti1Image):  # Nifti2Image is a subclass
        raise UWMInputError(f"{shown} is not a NIfTI file ({type(image).__name__})")
    shape = tuple(int(side) for side in image.shape)
    core = shape[:3]
    if len(shape) < 3:
        raise UWMInputError(
            f"{shown} is {len(shape)}D {shape}; a 3D volume (x, y, slices) is needed"
        )
    if any(side != 1 for side in shape[3:]):
        raise UWMInputError(
            f"{shown} is {len(shape)}D {shape}; give one 3D volume (x, y, slices), "
            "not a series of volumes"
        )
    if min(core) < 1:
        raise UWMInputError(f"{shown} has an empty axis (shape {shape})")
    zooms = image.header.get_zooms()[:3]
    if not all(math.isfinite(float(zoom)) and float(zoom) > 0 for zoom in zooms):
        raise UWMInputError(f"{shown} has voxel sizes {tuple(map(float, zooms))}; need all > 0")
    try:
        data = np.asanyarray(image.dataobj)
    except Exception as error:
        raise UWMInputError(f"{shown} cannot be read ({_reason(error)})") from None
    if data.dtype.kind not in "biuf":
        raise UWMInputError(f"{shown} holds {data.dtype} voxels; real numbers are needed")
    return NiftiVolume(path, image, data.reshape(core), shape)


def _reason(error: BaseException) -> str:
    return one_line(error, 120) or type(error).__name__


def intensities_to_uint16(data: np.ndarray, shown: str = "volume") -> np.ndarray:
    """Any real MRI volume → ``uint16`` for the models (the rule of the module docstring).

    Raises:
        UWMInputError: NaN or infinite voxels (named with ``shown``).
    """
    data = np.asarray(data)
    if data.dtype == np.uint16:
        return data
    if data.dtype.kind == "b":
        return data.astype(np.uint16)
    if data.dtype.kind == "f":
        finite = np.isfinite(data)
        if not finite.all():
            bad = int(data.size - np.count_nonzero(finite))
            raise UWMInputError(f"{shown} has {bad} NaN or infinite voxels")
    if data.size == 0:
        return data.astype(np.uint16)
    low, high = data.min(), data.max()
    integral = data.dtype.kind in "iu" or bool(np.all(np.floor(data) == data))
    if integral and low >= 0 and high <= _UINT16_MAX:
        return data.astype(np.uint16)
    if high <= low:
        return np.zeros(data.shape, dtype=np.uint16)
    # float64 for the arithmetic: int64 / uint64 ranges and float16 data stay exact enough.
    scale = _UINT16_MAX / (float(high) - float(low))
    scaled = (data.astype(np.float64) - float(low)) * scale
    return np.rint(scaled, out=scaled).clip(0, _UINT16_MAX).astype(np.uint16)


def read_label_nifti(path: str | os.PathLike) -> tuple[np.ndarray, NiftiVolume]:
    """A ``_seg`` label file → ``(D, H, W)`` ``uint8`` labels (values 0..3) and the volume.

    Raises:
        UWMInputError: not a 3D NIfTI file, or values that are not labels.
    """
    volume = load_nifti(path, "label file")
    labels = _integer_values(volume, set(range(len(CLASSES) + 1)), "label file")
    return to_dhw(labels), volume


def read_mask_nifti(path: str | os.PathLike) -> tuple[np.ndarray, NiftiVolume]:
    """A per-class mask file → ``(D, H, W)`` bool mask and the volume (values must be 0/1)."""
    volume = load_nifti(path, "mask file")
    mask = _integer_values(volume, {0, 1}, "mask file")
    return to_dhw(mask).astype(bool), volume


def _integer_values(volume: NiftiVolume, allowed: set[int], what: str) -> np.ndarray:
    data = volume.data
    if data.dtype.kind == "f" and not (np.isfinite(data).all() and (np.floor(data) == data).all()):
        raise UWMInputError(f"{what} {str(volume.path)!r} holds non-integer values")
    present = {int(value) for value in np.unique(data)}
    unknown = sorted(present - allowed)
    if unknown:
        raise UWMInputError(
            f"{what} {str(volume.path)!r} holds value {unknown[0]} "
            f"(allowed: {', '.join(map(str, sorted(allowed)))})"
        )
    return data.astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# Back to competition rows


def rle_rows(
    masks: np.ndarray, case_day: str, slice_numbers: Sequence[int] | None = None
) -> pd.DataFrame:
    """``(C, D, H, W)`` masks of one case-day → competition rows ``id,class,segmentation``.

    Args:
        masks: per-class masks in :data:`CLASSES` order, slices in slice-number order (use
            :func:`class_masks` for a label map).
        case_day: ``case<N>_day<M>``.
        slice_numbers: the slice number of each of the ``D`` slices; ``1..D`` by default (the
            competition numbers a case-day's slices from 1).

    Returns:
        Three rows per slice (in slice order, classes in :data:`CLASSES` order), row-major
        1-based RLE, ``""`` for an empty mask.
    """
    case, day = parse_case_day(case_day)
    masks = np.asarray(masks)
    if masks.ndim != 4 or masks.shape[0] != len(CLASSES):
        raise ValueError(f"expected ({len(CLASSES)}, D, H, W) masks, got shape {masks.shape}")
    depth = masks.shape[1]
    numbers = (
        list(range(1, depth + 1)) if slice_numbers is None else [int(n) for n in slice_numbers]
    )
    if len(numbers) != depth:
        raise UWMInputError(
            f"{case_day}: {len(numbers)} slice numbers given for a volume of {depth} slices"
        )
    rows = [
        (format_slice_id(case, day, number), name, rle_encode(masks[class_index, index]))
        for index, number in enumerate(numbers)
        for class_index, name in enumerate(CLASSES)
    ]
    return pd.DataFrame(rows, columns=["id", "class", "segmentation"])


def nifti_rle_rows(
    case_day: str,
    labels: str | os.PathLike | None = None,
    class_files: Mapping[str, str | os.PathLike] | None = None,
    slice_numbers: Sequence[int] | None = None,
) -> pd.DataFrame:
    """Competition rows from a ``_seg`` label file or from per-class mask files.

    Args:
        case_day: the case-day the volume is (``case<N>_day<M>``).
        labels: a label file (values 0..3); its overlaps were already resolved.
        class_files: ``{class: mask file}``, exact masks; a class without a file is empty.
        slice_numbers: see :func:`rle_rows`.

    Raises:
        UWMInputError: neither or both sources, an unknown class, a file that is not a 3D NIfTI
            label / mask file, or mask files of different shapes.
    """
    if (labels is None) == (not class_files):
        raise UWMInputError("give either a label file or per-class mask files")
    if labels is not None:
        label_volume, _ = read_label_nifti(labels)
        return rle_rows(class_masks(label_volume), case_day, slice_numbers)
    unknown = sorted(set(class_files) - set(CLASSES))
    if unknown:
        raise UWMInputError(f"unknown class {unknown[0]!r} (expected one of {', '.join(CLASSES)})")
    read = {name: read_mask_nifti(path)[0] for name, path in class_files.items()}
    shapes = {mask.shape for mask in read.values()}
    if len(shapes) != 1:
        raise UWMInputError(f"the mask files of {case_day} differ in shape: {sorted(shapes)}")
    (shape,) = shapes
    masks = np.stack([read.get(name, np.zeros(shape, dtype=bool)) for name in CLASSES])
    return rle_rows(masks, case_day, slice_numbers)


# ---------------------------------------------------------------------------------------------
# Volumes in mL


def volume_ml(voxels: int, spacing_x: float, spacing_y: float) -> float:
    """``voxels * PX * PY * 3.0 / 1000``: mL of ``voxels`` voxels of a case-day."""
    return float(voxels) * float(spacing_x) * float(spacing_y) * SLICE_THICKNESS_MM / 1000.0


def volumes_csv_text(rows: Iterable[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """The text of a volumes CSV: one row per (case_day, class), 4 decimals, NaN as empty."""
    frame = pd.DataFrame(list(rows), columns=list(columns))
    return frame.to_csv(index=False, float_format="%.4f", lineterminator="\n")
