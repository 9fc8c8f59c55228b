"""Bad export folders and configs that cannot be exported: one line, exit status 2, nothing written.

Each row copies a good export into its own folder, breaks it, runs the tool as a subprocess and
checks the folder holds exactly what it held before (no output, no temp file or folder).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from uwm_d2.core.errors import UWMInputError
from uwm_d2.deploy import METADATA_FILE
from uwm_d2.deploy.export_format import file_sha256

from .conftest import MASK_RCNN, REPO_ROOT, SEMANTIC, Model, run_tool, write_case_day_nifti

pytestmark = pytest.mark.slow


def _metadata(folder: Path) -> dict:
    return json.loads((folder / METADATA_FILE).read_text())


def _rewrite(folder: Path, edit: Callable[[dict], None]) -> None:
    document = _metadata(folder)
    edit(document)
    (folder / METADATA_FILE).write_text(json.dumps(document))


def _no_metadata(folder: Path) -> str:
    (folder / METADATA_FILE).unlink()
    return f"{folder.name}' is incomplete"


def _network_missing(folder: Path) -> str:
    (folder / "member0_net0.onnx").unlink()
    return "'member0_net0.onnx' is missing"


def _newer_version(folder: Path) -> str:
    _rewrite(folder, lambda document: document.update(format_version=2))
    return "export format version 2"


def _five_channels(folder: Path) -> str:
    def edit(document: dict) -> None:
        inputs = document["members"][0]["inputs"]
        inputs.update(slice_offsets=[-2, -1, 0, 1, 2], pixel_mean=[40.0] * 5, pixel_std=[64.0] * 5)

    _rewrite(folder, edit)
    return "(5 channels"


def _refused_by_onnxruntime(folder: Path) -> str:
    network = folder / "member0_net0.onnx"
    network.write_bytes(b"\x08\x07 not a protobuf model " * 50)
    _rewrite(folder, lambda d: d["members"][0]["networks"][0].update(sha256=file_sha256(network)))
    return "onnxruntime cannot load"


def _swapped_network(folder: Path) -> str:
    (folder / "member0_net0.onnx").write_bytes(b"\0" * 10)
    return "SHA-256 mismatch"


@dataclass(frozen=True)
class Row:
    tool: str
    breaks: Callable[[Path], str]


ROWS = {
    "no-metadata": Row("infer_submit", _no_metadata),
    "network-missing": Row("infer_submit", _network_missing),
    "newer-format": Row("infer_submit", _newer_version),
    "metadata-not-the-networks": Row("infer_submit", _five_channels),
    "refused-by-onnxruntime": Row("infer_submit", _refused_by_onnxruntime),
    "changed-network-file": Row("infer_submit", _swapped_network),
    "nifti-newer-format": Row("predict_nifti", _newer_version),
    "overrides-with-exported": Row("infer_submit", lambda folder: "MODEL.DEVICE"),
}


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {
        str(path.relative_to(folder)): (path.stat().st_size, path.stat().st_mtime_ns)
        for path in sorted(folder.rglob("*"))
    }


def _assert_one_line_and_nothing_written(result, culprit: str, before: dict, after: dict) -> None:
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert culprit in lines[0], lines[0]
    assert after == before


@pytest.mark.parametrize("name", list(ROWS))
def test_a_bad_export_folder_is_one_line_and_writes_nothing(
    name: str, exported: Callable[[str, str], Path], phantom_root: Path, tmp_path: Path
) -> None:
    row = ROWS[name]
    folder = tmp_path / "export"
    shutil.copytree(exported("semantic", "onnx"), folder)
    culprit = row.breaks(folder)
    if row.tool == "infer_submit":
        args = ["--data-root", str(phantom_root), "--out", str(tmp_path / "sub.csv")]
    else:
        scan = write_case_day_nifti(phantom_root, "test", tmp_path / "nifti" / "scan.nii.gz")
        args = ["--input", str(scan), "--out", str(tmp_path / "out")]
    extra = ["MODEL.DEVICE", "cpu"] if name == "overrides-with-exported" else []
    before = _snapshot(tmp_path)
    result = run_tool(row.tool, ["--exported", str(folder), *args, *extra], timeout=300)
    _assert_one_line_and_nothing_written(result, culprit, before, _snapshot(tmp_path))


@pytest.mark.parametrize(
    ("name", "opts", "culprit"),
    [
        (
            "head-without-sigmoid-maps",
            ["MODEL.SEM_SEG_HEAD.NAME", "SemSegFPNHead"],
            "MODEL.SEM_SEG_HEAD.NAME 'SemSegFPNHead'",
        ),
        (
            "no-soft-outputs",
            ["MODEL.META_ARCHITECTURE", "GeneralizedRCNN"],
            "'GeneralizedRCNN' has no soft outputs",
        ),
    ],
)
def test_a_config_that_cannot_be_exported_is_one_line_and_writes_nothing(
    name: str, opts: list[str], culprit: str, trained_semantic: Model, tmp_path: Path
) -> None:
    before = _snapshot(tmp_path)
    config = SEMANTIC if name == "head-without-sigmoid-maps" else MASK_RCNN
    args = ["--config-file", config, "--format", "onnx", "--out", str(tmp_path / "out" / "e")]
    result = run_tool("export_model", [*args, *trained_semantic.all_opts, *opts])
    _assert_one_line_and_nothing_written(result, culprit, before, _snapshot(tmp_path))


def test_export_refuses_a_folder_that_is_not_empty(tmp_path: Path) -> None:
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file.txt").write_text("keep me")
    before = _snapshot(tmp_path)
    args = ["--config-file", SEMANTIC, "--format", "onnx", "--out", str(tmp_path / "taken")]
    result = run_tool("export_model", args)
    _assert_one_line_and_nothing_written(result, "taken' is not empty", before, _snapshot(tmp_path))


def test_a_failed_self_check_writes_nothing(
    trained_semantic: Model, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from uwm_d2.export import exporter

    # A tolerance nothing meets stands for an export whose probabilities are off.
    monkeypatch.setattr(exporter, "PROBABILITY_TOLERANCE", -1.0)
    with pytest.raises(UWMInputError, match="differs from its PyTorch model"):
        exporter.export_model(
            str(REPO_ROOT / SEMANTIC), trained_semantic.all_opts, "onnx", tmp_path / "a" / "e"
        )
    assert list(tmp_path.iterdir()) == []
