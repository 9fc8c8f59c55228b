"""``export_nifti``, ``predict_nifti`` and ``evaluate --volumes`` as their users run them.

The NIfTI tools run as subprocesses: ``predict_nifti`` beside ``infer_submit`` with the same
untrained semantic checkpoint (its maps hover around 0.5, so the masks are far from empty or full
and any difference in stacking, window or merge would show), and compared voxel by voxel after the
inverse layout. ``export_nifti`` and ``evaluate --volumes`` are checked against direct
computations. Their bad input is in the tools' one harness, tests/tools/test_bad_input.py.
"""

from __future__ import annotations

import importlib.util
import math
import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from uwm_d2.core.ids import CLASSES
from uwm_d2.core.layout_reader import index_scans, read_label_csv, read_prediction_csv
from uwm_d2.core.metrics import dice_3d, hd95_mm
from uwm_d2.core.nifti import label_map, to_xyz
from uwm_d2.core.rle import rle_decode
from uwm_d2.data.nifti_export import export_case_days

from ..conftest import INSTANT_CONFIGS, REPO_ROOT, run_tool, tool_env

SEMANTIC = INSTANT_CONFIGS["semantic"]
#: Small and quick: a 64-pixel input, 2 slices per batch.
FAST = ["MODEL.DEVICE", "cpu", "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "96"]

_BUILD_SEMANTIC = """
import sys
import torch
from detectron2.modeling import build_model
from uwm_d2.config import build_cfg

torch.manual_seed(0)
cfg = build_cfg(sys.argv[2], ["MODEL.DEVICE", "cpu"])
torch.save({"model": build_model(cfg).state_dict()}, sys.argv[1])
"""


@pytest.fixture(scope="module")
def semantic_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[], Path]]:
    """An untrained semantic checkpoint, built in the background; call the fixture to wait."""
    path = tmp_path_factory.mktemp("semantic") / "model.pth"
    process = subprocess.Popen(
        [sys.executable, "-c", _BUILD_SEMANTIC, str(path), SEMANTIC],
        cwd=REPO_ROOT,
        env=tool_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )

    def wait() -> Path:
        stderr = process.communicate(timeout=300)[1]
        assert process.returncode == 0, stderr
        return path

    yield wait
    if process.poll() is None:
        process.kill()
        process.wait()


def _load_tool(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"{name}_tool", REPO_ROOT / f"tools/{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _data(path: Path) -> np.ndarray:
    return np.asanyarray(nib.load(str(path)).dataobj)


def test_predict_nifti_overrides_after_inputs() -> None:
    """--input takes every word after it; the first config key there starts the overrides."""
    parse_args = _load_tool("predict_nifti").parse_args
    model = ["--config-file", "c.yaml", "--out", "o"]
    args = parse_args([*model, "--input", "a.nii", "b.nii", "MODEL.WEIGHTS", "w.pth", "X.Y", "1"])
    assert (args.input, args.opts) == (
        [Path("a.nii"), Path("b.nii")],
        ["MODEL.WEIGHTS", "w.pth", "X.Y", "1"],
    )
    args = parse_args(["--input", "a.nii", *model, "MODEL.WEIGHTS", "w.pth"])
    assert (args.input, args.opts) == ([Path("a.nii")], ["MODEL.WEIGHTS", "w.pth"])
    # A volume whose name merely contains capitals and dots stays an input.
    args = parse_args([*model, "--input", "Case1.Day2.nii.gz"])
    assert (args.input, args.opts) == ([Path("Case1.Day2.nii.gz")], [])


def test_export_nifti_tool(phantom_root: Path, tmp_path: Path, capsys) -> None:
    case_day = index_scans(phantom_root, "test")["case_day"].iloc[0]
    out = tmp_path / "new" / "out"
    _load_tool("export_nifti").main(
        [
            "--data-root",
            str(phantom_root),
            "--labels",
            str(phantom_root / "test_truth.csv"),
            "--case-day",
            case_day,
            "--out",
            str(out),
            "--per-class",
            "--volumes",
            str(out / "volumes.csv"),
        ]
    )
    assert f"wrote 1 case-days (8 slices) to {out}" in capsys.readouterr().out
    names = {f"{case_day}{suffix}.nii.gz" for suffix in ["", "_seg"] + [f"_{c}" for c in CLASSES]}
    assert {path.name for path in out.iterdir()} == names | {"volumes.csv"}
    volumes = pd.read_csv(out / "volumes.csv")
    for index, name in enumerate(CLASSES):
        mask = _data(out / f"{case_day}_{name}.nii.gz")
        row = volumes.iloc[index]
        assert (row["case_day"], row["class"]) == (case_day, name)
        assert row["voxels"] == np.count_nonzero(mask)
        assert row["volume_ml"] == pytest.approx(row["voxels"] * 1.5 * 1.5 * 3.0 / 1000, abs=1e-4)


def test_evaluate_volumes(phantom_root: Path, tmp_path: Path, capsys) -> None:
    truth = read_label_csv(phantom_root / "test_truth.csv")
    pred = truth.rename(columns={"segmentation": "predicted"})
    pred.loc[pred["class"] == "stomach", "predicted"] = ""  # missed
    large = pred.index[(pred["class"] == "large_bowel") & (pred["predicted"] != "")]
    pred.loc[large[::2], "predicted"] = ""  # half the slices of large bowel missed
    pred.to_csv(tmp_path / "pred.csv", index=False)
    _load_tool("evaluate").main(
        [
            "--data-root",
            str(phantom_root),
            "--truth",
            str(phantom_root / "test_truth.csv"),
            "--pred",
            str(tmp_path / "pred.csv"),
            "--volumes",
            str(tmp_path / "volumes.csv"),
        ]
    )
    capsys.readouterr()
    table = pd.read_csv(tmp_path / "volumes.csv")
    assert list(table.columns) == [
        "case_day",
        "class",
        "truth_voxels",
        "pred_voxels",
        "truth_ml",
        "pred_ml",
        "diff_ml",
        "diff_percent",
        "dice_3d",
        "hd95_mm",
    ]
    scans = index_scans(phantom_root, "test")
    assert len(table) == 3 * scans["case_day"].nunique()
    predicted = read_prediction_csv(tmp_path / "pred.csv").set_index(["id", "class"])["predicted"]
    rows = truth.set_index(["id", "class"])["segmentation"]
    for row in table.itertuples(index=False):
        ids = scans.loc[scans["case_day"] == row.case_day].sort_values("slice")["id"]
        volumes = [
            np.stack([rle_decode(table_[i, row[1]], (310, 360)) for i in ids]).astype(bool)
            for table_ in (rows, predicted)
        ]
        truth_vol, pred_vol = volumes
        ml = 1.5 * 1.5 * 3.0 / 1000
        assert row.truth_voxels == truth_vol.sum() and row.pred_voxels == pred_vol.sum()
        assert row.truth_ml == pytest.approx(truth_vol.sum() * ml, abs=1e-4)
        assert row.diff_ml == pytest.approx((pred_vol.sum() - truth_vol.sum()) * ml, abs=1e-4)
        percent = 100 * (pred_vol.sum() - truth_vol.sum()) / truth_vol.sum()
        assert row.diff_percent == pytest.approx(percent, abs=1e-4)
        assert row.dice_3d == pytest.approx(dice_3d(pred_vol, truth_vol), abs=1e-4)
        hd95 = hd95_mm(pred_vol, truth_vol, (3.0, 1.5, 1.5))
        assert (math.isnan(row.hd95_mm) and math.isnan(hd95)) or row.hd95_mm == pytest.approx(
            hd95, abs=1e-4
        )
    stomach = table[table["class"] == "stomach"]
    assert (stomach["diff_percent"] == -100).all() and stomach["hd95_mm"].isna().all()
    small = table[table["class"] == "small_bowel"]
    assert (small["dice_3d"] == 1).all() and (small["diff_ml"] == 0).all()


@pytest.mark.slow
def test_predict_nifti_matches_infer_submit(
    phantom_root: Path, tmp_path: Path, semantic_checkpoint: Callable[[], Path]
) -> None:
    summary = export_case_days(
        phantom_root, phantom_root / "test_truth.csv", tmp_path / "in", split="test", progress=False
    )
    first = tmp_path / "in" / f"{summary.case_days[0]}.nii.gz"
    source = nib.load(str(first))
    # The first volume again, said to be 1.0 mm wide (resampled) and stored as float (mapped).
    one_mm = tmp_path / "in" / "one_mm.nii.gz"
    nib.save(nib.Nifti1Image(np.asanyarray(source.dataobj), np.diag([1, 1, 3.0, 1])), one_mm)
    floats = tmp_path / "in" / "floats.nii"
    scaled = np.asanyarray(source.dataobj).astype(np.float32) * 0.5 + 0.25
    nib.save(nib.Nifti1Image(scaled, source.affine), floats)
    inputs = [tmp_path / "in" / f"{case_day}.nii.gz" for case_day in summary.case_days]

    checkpoint = str(semantic_checkpoint())
    model = ["--config-file", SEMANTIC, "--batch-size", "4"]
    opts = ["MODEL.WEIGHTS", checkpoint, *FAST]
    predict_args = [*model, "--out", str(tmp_path / "out"), "--per-class"]
    for path in [*inputs, one_mm, floats]:
        predict_args += ["--input", str(path)]
    submit_args = [*model, "--data-root", str(phantom_root), "--out", str(tmp_path / "sub.csv")]
    with ThreadPoolExecutor(2) as pool:
        predicted = pool.submit(run_tool, "predict_nifti", predict_args + opts)
        submitted = pool.submit(run_tool, "infer_submit", submit_args + opts)
        predicted, submitted = predicted.result(), submitted.result()
    assert predicted.returncode == 0, predicted.stderr
    assert submitted.returncode == 0, submitted.stderr
    assert f"wrote {len(inputs) + 2} segmentations" in predicted.stdout

    submission = read_prediction_csv(tmp_path / "sub.csv").set_index(["id", "class"])["predicted"]
    scans = index_scans(phantom_root, "test")
    for case_day, path in zip(summary.case_days, inputs, strict=True):
        ids = scans.loc[scans["case_day"] == case_day].sort_values("slice")["id"]
        masks = np.stack(
            [
                np.stack([rle_decode(submission[i, name], (310, 360)) for i in ids])
                for name in CLASSES
            ]
        )
        assert 0.05 < masks.mean() < 0.95  # the comparison is not between two empty volumes
        output = nib.load(str(tmp_path / "out" / f"{case_day}_seg.nii.gz"))
        np.testing.assert_array_equal(output.affine, nib.load(str(path)).affine)
        np.testing.assert_array_equal(np.asanyarray(output.dataobj), to_xyz(label_map(masks)))
        for index, name in enumerate(CLASSES):
            mask = _data(tmp_path / "out" / f"{case_day}_{name}.nii.gz")
            np.testing.assert_array_equal(mask, to_xyz(masks[index]))
    resampled = nib.load(str(tmp_path / "out" / "one_mm_seg.nii.gz"))
    assert resampled.shape == source.shape
    np.testing.assert_array_equal(resampled.affine, np.diag([1, 1, 3.0, 1]))
    reference = _data(tmp_path / "out" / f"{summary.case_days[0]}_seg.nii.gz")
    assert np.mean(_data(tmp_path / "out" / "floats_seg.nii.gz") == reference) > 0.999
