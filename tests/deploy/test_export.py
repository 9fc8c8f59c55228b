"""Exports of each kind and format, and parity of the exported predictor with the PyTorch one.

Parity is measured where it matters, on every slice of the tiny phantom's test split with flip
TTA: the two predictors' probabilities differ by at most :data:`PROBABILITY_TOLERANCE` and their
masks (after the merge rule) are identical, and not empty.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from uwm_d2.config import build_cfg
from uwm_d2.core.layout_reader import index_scans
from uwm_d2.core.merge import MergeRule
from uwm_d2.deploy import METADATA_FILE, load_exported, read_export
from uwm_d2.inference.ensemble import build_predictor
from uwm_d2.inference.volume import scan_records

from .conftest import (
    KEEP_ALL_DETECTIONS,
    REPO_ROOT,
    Model,
    run_tool,
    tool_env,
    write_case_day_nifti,
)

#: Largest probability difference allowed between the PyTorch and the exported predictor.
#: Measured: 0 for TorchScript, 2.4e-5 (semantic) and 1.3e-5 (Mask R-CNN) for onnxruntime.
PROBABILITY_TOLERANCE = 1e-4


def parity(model: Model, export: Path, data_root: Path) -> dict[str, float]:
    """Both predictors with flip TTA on every test slice: the largest probability difference,
    the number of mask pixels that differ, and the foreground pixels of the PyTorch masks."""
    torch_predictor = build_predictor(str(REPO_ROOT / model.config), model.all_opts, tta=True)
    deploy_predictor = load_exported([export], tta=True)
    largest, differing, foreground = 0.0, 0, 0
    for records in scan_records(data_root, index_scans(data_root, "test")).values():
        expected = torch_predictor.predict_probabilities(records)
        found = deploy_predictor.predict_probabilities(records)
        largest = max(largest, float(np.abs(expected - found).max()))
        masks = torch_predictor.rule.volume_masks(expected)
        differing += int((masks != deploy_predictor.rule.volume_masks(found)).sum())
        foreground += int(masks.sum())
    return {"largest": largest, "differing": differing, "foreground": foreground}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("kind", "network_format"),
    [
        ("semantic", "onnx"),
        ("semantic", "torchscript"),
        ("mask_rcnn", "torchscript"),
        ("mask_rcnn", "onnx"),
        ("combined", "torchscript"),
    ],
)
def test_the_exported_predictor_gives_the_pytorch_masks(
    kind: str,
    network_format: str,
    exported: Callable[[str, str], Path],
    models: dict[str, Model],
    phantom_root: Path,
) -> None:
    result = parity(models[kind], exported(kind, network_format), phantom_root)
    assert result["foreground"] > 100, result  # a model that predicts something
    assert result["differing"] == 0, result
    assert result["largest"] <= PROBABILITY_TOLERANCE, result
    if network_format == "torchscript":
        assert result["largest"] < 1e-6, result


@pytest.mark.slow
def test_the_metadata_carries_the_configs_rules(
    exported: Callable[[str, str], Path], trained_semantic: Model
) -> None:
    folder = exported("semantic", "onnx")
    info = read_export(folder)
    cfg = build_cfg(REPO_ROOT / trained_semantic.config, trained_semantic.all_opts)
    (member,) = info.members
    assert info.network_format == "onnx" and info.tta is False
    assert info.merge_rule == MergeRule.from_cfg(cfg) == member.merge_rule
    assert member.interface == "semantic" and member.meta_architecture == "UWMSemanticSegmentor"
    rule = member.inputs
    assert rule.slice_offsets == tuple(cfg.UWM.SLICE_OFFSETS)
    assert (rule.min_size_test, rule.max_size_test) == (128, 224)
    assert rule.pixel_mean == tuple(cfg.MODEL.PIXEL_MEAN)
    assert rule.pixel_std == tuple(cfg.MODEL.PIXEL_STD)
    assert rule.size_divisibility == 32
    document = json.loads((folder / METADATA_FILE).read_text())
    assert document["self_check"]["max_probability_difference"] <= 1e-3
    assert sorted(path.name for path in folder.iterdir()) == [
        "member0_net0.onnx",
        METADATA_FILE,
    ]


@pytest.mark.slow
def test_a_merge_rule_setting_reaches_the_exported_predictor(
    trained_semantic: Model, tmp_path: Path
) -> None:
    from uwm_d2.export.exporter import export_model

    opts = [
        *trained_semantic.all_opts,
        "UWM.EVAL.MASK_THRESHOLD",
        "0.7",
        "UWM.EVAL.CLEANUP_3D",
        "True",
    ]
    export_model(str(REPO_ROOT / trained_semantic.config), opts, "torchscript", tmp_path / "e")
    rule = load_exported([tmp_path / "e"]).rule
    assert rule == MergeRule.from_cfg(build_cfg(REPO_ROOT / trained_semantic.config, opts))
    assert rule.mask_threshold == 0.7 and rule.cleanup_3d


@pytest.mark.slow
def test_ensembles_average_like_the_pytorch_ensemble(
    exported: Callable[[str, str], Path],
    trained_semantic: Model,
    untrained_mask_rcnn: Model,
    phantom_root: Path,
    tmp_path: Path,
) -> None:
    from uwm_d2.export.exporter import export_model

    opts = ["MODEL.DEVICE", "cpu", *KEEP_ALL_DETECTIONS]

    def ensemble_file(semantic_weight: float, mask_rcnn_weight: float) -> Path:
        members = [
            {"config": str(REPO_ROOT / model.config), "weights": str(model.checkpoint), "weight": w}
            for model, w in (
                (trained_semantic, semantic_weight),
                (untrained_mask_rcnn, mask_rcnn_weight),
            )
        ]
        path = tmp_path / f"ensemble-{semantic_weight}-{mask_rcnn_weight}.yaml"
        path.write_text(json.dumps({"members": members}))  # JSON is YAML
        return path

    records = next(iter(scan_records(phantom_root, index_scans(phantom_root, "test")).values()))

    def difference(torch_predictor, deploy_predictor) -> float:
        expected = torch_predictor.predict_probabilities(records)
        return float(np.abs(expected - deploy_predictor.predict_probabilities(records)).max())

    # Several folders: every member at its own weight (1 each).
    folders = [exported("semantic", "onnx"), exported("mask_rcnn", "onnx")]
    together = build_predictor(None, opts, ensemble_file(1, 1))
    assert difference(together, load_exported(folders)) <= PROBABILITY_TOLERANCE
    # One --ensemble export: the file's weights travel with the members.
    weighted = ensemble_file(2, 1)
    export_model(None, opts, "torchscript", tmp_path / "weighted", ensemble_file=weighted)
    deploy_predictor = load_exported([tmp_path / "weighted"])
    assert [member.weight for member in deploy_predictor.members] == [2.0, 1.0]
    assert [member.network_count for member in deploy_predictor.members] == [1, 1]
    assert difference(build_predictor(None, opts, weighted), deploy_predictor) < 1e-6


@pytest.mark.slow
def test_infer_submit_and_predict_nifti_with_exported_models(
    exported: Callable[[str, str], Path],
    trained_semantic: Model,
    phantom_root: Path,
    tmp_path: Path,
) -> None:
    folder = exported("semantic", "onnx")
    common = ["--data-root", str(phantom_root), "--tta"]
    torch_run = run_tool(
        "infer_submit",
        ["--config-file", trained_semantic.config, *common, "--out", str(tmp_path / "torch.csv"),
         *trained_semantic.all_opts],
    )  # fmt: skip
    assert torch_run.returncode == 0, torch_run.stderr
    deploy_run = run_tool(
        "infer_submit", ["--exported", str(folder), *common, "--out", str(tmp_path / "onnx.csv")]
    )
    assert deploy_run.returncode == 0, deploy_run.stderr
    expected = pd.read_csv(tmp_path / "torch.csv", keep_default_na=False)
    assert (expected["predicted"] != "").sum() > 0
    assert expected.equals(pd.read_csv(tmp_path / "onnx.csv", keep_default_na=False))

    # One test case-day as a NIfTI volume, through both predict_nifti paths.
    scan = write_case_day_nifti(phantom_root, "test", tmp_path / "nifti" / "scan.nii.gz")
    outs = {}
    for name, source in (
        ("torch", ["--config-file", trained_semantic.config]),
        ("onnx", ["--exported", str(folder)]),
    ):
        extra = trained_semantic.all_opts if name == "torch" else []
        args = [*source, "--input", str(scan), "--out", str(tmp_path / name), *extra]
        result = run_tool("predict_nifti", args)
        assert result.returncode == 0, result.stderr
        outs[name] = np.asarray(nib.load(tmp_path / name / "scan_seg.nii.gz").dataobj)
    assert outs["torch"].any()
    np.testing.assert_array_equal(outs["torch"], outs["onnx"])


@pytest.mark.slow
def test_importing_deploy_loads_no_torch_and_torchscript_runs_without_detectron2(
    exported: Callable[[str, str], Path], phantom_root: Path
) -> None:
    onnx_folder, script_folder = exported("semantic", "onnx"), exported("mask_rcnn", "torchscript")
    code = f"""
import sys
sys.modules["detectron2"] = None  # any import of detectron2 now fails
from uwm_d2.core.layout_reader import index_scans
from uwm_d2.deploy import load_exported
from uwm_d2.inference.volume import scan_records
heavy = lambda: sorted({{n.split(".")[0] for n in sys.modules if n.split(".")[0] in
                        ("torch", "torchvision", "detectron2") and sys.modules[n] is not None}})
predictor = load_exported([{str(onnx_folder)!r}])
root = {str(phantom_root)!r}
records = next(iter(scan_records(root, index_scans(root, "test")).values()))
predictor.predict_case_day(records)
print("onnx", heavy())
predictor = load_exported([{str(script_folder)!r}])
print("masks", int(predictor.predict_case_day(records).sum()), heavy())
"""
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, env=tool_env(), capture_output=True,
        text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    onnx_line, script_line = result.stdout.splitlines()
    assert onnx_line == "onnx []"
    count, modules = script_line.split(" ", 2)[1:]
    # TorchScript: torch, and torchvision for the detector's NMS and RoIAlign operators.
    assert int(count) > 0 and modules == "['torch', 'torchvision']"
