"""The NIfTI format of uwm_d2.core.nifti: label maps, strict reading, intensities.

The export of whole case-days, read back and checked against the PNGs and the CSV rows, is tested
in tests/data/test_nifti_export.py.
"""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from uwm_d2.core.errors import UWMInputError
from uwm_d2.core.nifti import (
    class_masks,
    intensities_to_uint16,
    label_map,
    load_nifti,
    read_label_nifti,
)


def test_label_map_and_class_masks() -> None:
    masks = np.zeros((3, 1, 2, 2), dtype=bool)
    masks[0, 0, 0] = True  # large bowel: top row
    masks[1, 0, :, 0] = True  # small bowel: left column
    masks[2, 0, 1, 1] = True  # stomach
    labels = label_map(masks)
    np.testing.assert_array_equal(labels[0], [[2, 1], [2, 3]])
    np.testing.assert_array_equal(class_masks(labels)[0, 0], [[False, True], [False, False]])


def _write(path: Path, data: np.ndarray, zooms=(1.5, 1.5, 3.0)) -> Path:
    image = nib.Nifti1Image(data, np.diag([*zooms, 1.0]))
    nib.save(image, str(path))
    return path


def test_bad_nifti_files_are_one_line_errors(phantom_root: Path, tmp_path: Path) -> None:
    png = next((phantom_root / "test").rglob("*.png"))
    renamed = tmp_path / "scan.nii.gz"
    shutil.copyfile(png, renamed)
    gzipped_png = tmp_path / "gz.nii.gz"
    gzipped_png.write_bytes(gzip.compress(png.read_bytes()))
    cases = {
        renamed: "not a readable NIfTI",
        gzipped_png: "not a readable NIfTI",
        _write(tmp_path / "4d.nii.gz", np.zeros((4, 3, 2, 2), np.int16)): "not a series",
        _write(tmp_path / "2d.nii", np.zeros((4, 3), np.int16)): "3D volume",
        tmp_path / "missing.nii.gz": "does not exist",
        png: "expected a .nii or .nii.gz name",
    }
    for path, reason in cases.items():
        with pytest.raises(UWMInputError, match=reason) as error:
            load_nifti(path)
        assert str(path) in str(error.value) and "\n" not in str(error.value)
    # A trailing axis of size 1 is still one 3D volume.
    volume = load_nifti(_write(tmp_path / "ok.nii.gz", np.ones((4, 3, 2, 1), np.int16)))
    assert volume.data.shape == (4, 3, 2) and volume.shape == (4, 3, 2, 1)
    labels = _write(tmp_path / "labels.nii.gz", np.full((4, 3, 2), 7, np.uint8))
    with pytest.raises(UWMInputError, match="holds value 7"):
        read_label_nifti(labels)


def test_intensities_to_uint16() -> None:
    in_range = np.array([[0, 4000], [65535, 7]], dtype=np.int32)
    np.testing.assert_array_equal(intensities_to_uint16(in_range), in_range)
    integral_floats = np.array([0.0, 12.0, 3000.0], dtype=np.float32)
    np.testing.assert_array_equal(intensities_to_uint16(integral_floats), [0, 12, 3000])
    negative = np.array([-100, 0, 100], dtype=np.int16)
    np.testing.assert_array_equal(intensities_to_uint16(negative), [0, 32768, 65535])
    fractions = np.array([0.25, 0.5, 1.25], dtype=np.float64)
    np.testing.assert_array_equal(intensities_to_uint16(fractions), [0, 16384, 65535])
    np.testing.assert_array_equal(intensities_to_uint16(np.full(3, -2.5)), [0, 0, 0])
    with pytest.raises(UWMInputError, match="1 NaN or infinite"):
        intensities_to_uint16(np.array([1.0, np.nan]), "volume 'x'")
