"""Predicting NIfTI volumes goes through the submission's predictor, and lands on the input's grid.

A stand-in semantic model whose class maps follow the brightness of its three 2.5D channels
(class c from channel c: the slices k-2, k, k+2) makes the output depend on the stacking, the
window and the resampling, so the NIfTI path can be compared with ``infer_submit``'s path on the
same slices, exactly, and a resampled volume with the original one.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

pytest.importorskip("detectron2")
import torch
import torch.nn.functional as F

from uwm_d2.config import build_cfg
from uwm_d2.core.errors import UWMInputError
from uwm_d2.core.ids import CLASSES
from uwm_d2.core.layout_reader import index_scans
from uwm_d2.core.nifti import label_map, load_nifti, to_xyz
from uwm_d2.data.nifti_export import export_case_days
from uwm_d2.inference.nifti import (
    VolumeReader,
    predict_nifti_files,
    predict_volume,
    training_spacing,
)
from uwm_d2.inference.predictor import EnsembleMember, VolumePredictor, scan_records

from ..conftest import INSTANT_CONFIG


class BrightnessModel(torch.nn.Module):
    """``sem_seg`` class c = sigmoid((channel c - 110) / 10), at the record's height and width."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes: list[tuple[int, int]] = []

    def soft_outputs(self, batched_inputs):
        outputs = []
        for item in batched_inputs:
            size = (item["height"], item["width"])
            self.sizes.append(size)
            maps = torch.sigmoid((item["image"].float() - 110.0) / 10.0)[None]
            maps = F.interpolate(maps, size=size, mode="bilinear", align_corners=False)[0]
            outputs.append({"sem_seg": maps})
        return outputs


def _predictor(*opts: str) -> tuple[VolumePredictor, BrightnessModel]:
    cfg = build_cfg(INSTANT_CONFIG, ["MODEL.WEIGHTS", "unused.pth", *opts])
    model = BrightnessModel()
    return VolumePredictor([EnsembleMember(cfg, [model])], batch_size=3), model


@pytest.fixture(scope="module")
def exported(phantom_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("nifti_in")
    summary = export_case_days(
        phantom_root, phantom_root / "test_truth.csv", out, split="test", progress=False
    )
    return {case_day: out / f"{case_day}.nii.gz" for case_day in summary.case_days}


def _data(path: Path) -> np.ndarray:
    return np.asanyarray(nib.load(str(path)).dataobj)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.count_nonzero(a & b) / max(np.count_nonzero(a) + np.count_nonzero(b), 1)


def test_same_spacing_equals_the_submission_predictor(
    phantom_root: Path, exported: dict[str, Path], tmp_path: Path
) -> None:
    predictor, _ = _predictor()
    records = scan_records(phantom_root, index_scans(phantom_root, "test"))
    summary = predict_nifti_files(
        predictor, list(exported.values()), tmp_path / "out", per_class=True, progress=False
    )
    assert summary.volumes == len(exported)
    for case_day, source in exported.items():
        masks = predictor.predict_case_day(records[case_day])  # (D, C, H, W), from the PNGs
        assert 0 < masks.mean() < 1
        expected = to_xyz(label_map(masks.transpose(1, 0, 2, 3)))
        output = nib.load(str(tmp_path / "out" / f"{case_day}_seg.nii.gz"))
        source_image = nib.load(str(source))
        assert output.shape == source_image.shape == (360, 310, len(records[case_day]))
        np.testing.assert_array_equal(output.affine, source_image.affine)
        assert output.get_data_dtype() == np.uint8
        for form in ("get_qform", "get_sform"):
            got, code = getattr(output, form)(coded=True)
            want, want_code = getattr(source_image, form)(coded=True)
            np.testing.assert_array_equal(got, want)
            assert code == want_code
        np.testing.assert_array_equal(np.asanyarray(output.dataobj), expected)
        for index, name in enumerate(CLASSES):
            mask = _data(tmp_path / "out" / f"{case_day}_{name}.nii.gz")
            np.testing.assert_array_equal(mask, to_xyz(masks[:, index]))


@pytest.mark.parametrize(("spacing", "network"), [(1.0, (207, 240)), (2.0, (413, 480))])
def test_other_spacings_are_resampled_and_come_back_on_the_input_grid(
    exported: dict[str, Path], tmp_path: Path, spacing: float, network: tuple[int, int]
) -> None:
    source = next(iter(exported.values()))
    original = load_nifti(source)
    # The same voxels, said to be `spacing` mm wide, with a RAS affine and an origin.
    affine = np.diag([spacing, spacing, 3.0, 1.0])
    affine[:3, 3] = (-120.0, 40.0, 7.5)
    path = tmp_path / "other.nii.gz"
    nib.save(nib.Nifti1Image(original.data, affine), str(path))

    predictor, model = _predictor("INPUT.MIN_SIZE_TEST", "0")
    native = predict_volume(predictor, original)
    model.sizes.clear()
    predict_nifti_files(predictor, [path], tmp_path / "out", per_class=True, progress=False)
    assert set(model.sizes) == {network}  # the model saw the slices at 1.5 mm
    output = nib.load(str(tmp_path / "out" / "other_seg.nii.gz"))
    assert output.shape == original.data.shape
    np.testing.assert_allclose(output.affine, affine)
    for index, name in enumerate(CLASSES):
        mask = _data(tmp_path / "out" / f"other_{name}.nii.gz").astype(bool)
        # Down and up again blurs the edges a little (Dice ~0.98); a 2-pixel shift gives ~0.92.
        assert _dice(mask, native[index]) > 0.95, name


def test_int16_and_float_inputs(exported: dict[str, Path], tmp_path: Path) -> None:
    source = next(iter(exported.values()))
    original = load_nifti(source)
    predictor, _ = _predictor()
    native = predict_volume(predictor, original)
    int16 = tmp_path / "int16.nii.gz"
    nib.save(nib.Nifti1Image(original.data.astype(np.int16), original.affine), str(int16))
    np.testing.assert_array_equal(predict_volume(predictor, load_nifti(int16)), native)
    floats = tmp_path / "float.nii.gz"
    scaled = original.data.astype(np.float32) * 0.013 - 40.0  # negative, fractional values
    nib.save(nib.Nifti1Image(scaled, original.affine), str(floats))
    mapped = predict_volume(predictor, load_nifti(floats))
    # The percentile window does not see a linear map; only its rounding to 16 bits remains.
    assert np.mean(mapped == native) > 0.999


def test_reorient_turns_a_ras_volume_to_the_training_axes(
    exported: dict[str, Path], tmp_path: Path
) -> None:
    source = next(iter(exported.values()))
    original = load_nifti(source)
    predictor, _ = _predictor()
    native = predict_volume(predictor, original)
    # The same volume stored RAS (x and y reversed): as a converter such as dcm2niix may store it.
    ras = tmp_path / "ras.nii.gz"
    nib.save(nib.Nifti1Image(original.data[::-1, ::-1], np.diag([1.5, 1.5, 3.0, 1.0])), str(ras))
    turned = predict_volume(predictor, load_nifti(ras), reorient=True)
    np.testing.assert_array_equal(turned, native[:, ::-1, ::-1])


def test_ensemble_members_must_agree_on_the_training_spacing() -> None:
    first = build_cfg(INSTANT_CONFIG, ["MODEL.WEIGHTS", "a.pth"])
    second = build_cfg(INSTANT_CONFIG, ["MODEL.WEIGHTS", "b.pth", "UWM.PIXEL_SPACING_MM", "1.63"])
    predictor = VolumePredictor(
        [EnsembleMember(first, [BrightnessModel()]), EnsembleMember(second, [BrightnessModel()])]
    )
    with pytest.raises(UWMInputError, match=r"UWM\.PIXEL_SPACING_MM"):
        training_spacing(predictor)


def test_the_reader_knows_only_its_own_slices() -> None:
    reader = VolumeReader("nifti/x", np.zeros((2, 3, 4), np.uint16), (1.5, 1.5))
    other = VolumeReader("nifti/x", np.ones((2, 3, 4), np.uint16), (1.5, 1.5))
    assert reader(reader.names[1]).shape == (3, 4)
    assert Path(reader.names[0]).name == "slice_0001_4_3_1.50_1.50.png"
    for name in (other.names[0], str(Path(reader.names[0]).with_name("slice_0003.png"))):
        with pytest.raises(UWMInputError, match="not part of the volume"):
            reader(name)
