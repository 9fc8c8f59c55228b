"""Fixtures of the export tests: one briefly trained semantic model and its exports, per session.

Training is the slow part on 2 cores, so it happens once (``trained_semantic``: 40 iterations of
the semantic instant config on the tiny phantom, about 20 s; enough for probabilities that make
non-empty masks, which parity needs). Mask R-CNN is not trained: an untrained instant model that
keeps every detection (score cut 0 in the model and in the merge rule) already gives masks.
Exports are made once per (kind, format) and shared: treat them as read-only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

pytest.importorskip("detectron2")
pytest.importorskip("onnxruntime")

from ..conftest import REPO_ROOT, run_tool, tool_env  # noqa: F401 (shared with the tests)

SEMANTIC = "configs/quick_schedules/semantic_R_18_FPN_instant_test.yaml"
MASK_RCNN = "configs/quick_schedules/mask_rcnn_R_18_FPN_instant_test.yaml"
COMBINED = "configs/quick_schedules/panoptic_fpn_R_18_instant_test.yaml"
TRAIN_ITERATIONS = 40
#: Every detection kept: the untrained Mask R-CNN's scores are low.
KEEP_ALL_DETECTIONS = [
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST",
    "0.0",
    "UWM.EVAL.SCORE_THRESHOLDS",
    "(0.0, 0.0, 0.0)",
    "TEST.DETECTIONS_PER_IMAGE",
    "20",
]


@dataclass(frozen=True)
class Model:
    """A config, its overrides (device, weights, ...) and its checkpoint."""

    config: str
    opts: tuple[str, ...]
    checkpoint: Path

    @property
    def all_opts(self) -> list[str]:
        return [*self.opts, "MODEL.WEIGHTS", str(self.checkpoint)]


def write_case_day_nifti(data_root: Path, split: str, path: Path) -> Path:
    """The first case-day of ``split`` as a NIfTI volume (the layout export_nifti writes)."""
    import nibabel as nib
    import numpy as np

    from uwm_d2.core.ids import parse_scan_name
    from uwm_d2.core.io import read_scan

    scans = sorted(next(iter(sorted((data_root / split).glob("*/*/scans")))).glob("*.png"))
    name = parse_scan_name(scans[0].name)
    volume = np.stack([read_scan(scan).T for scan in scans], axis=-1)  # (W, H, slices)
    affine = np.diag([-name.spacing_x, -name.spacing_y, 3.0, 1.0])
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(volume, affine), path)
    return path


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """One thread: two spin against each other on a shared 2-core machine (see tests/engine)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def trained_semantic(phantom_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Model:
    """The semantic instant config after a few iterations on the tiny phantom."""
    from uwm_d2.data.coco import make_coco

    folder = tmp_path_factory.mktemp("trained")
    make_coco(phantom_root, folder / "coco", num_folds=2, workers=1, progress=False)
    args = [
        "--config-file", SEMANTIC, "UWM.DATA_ROOT", str(phantom_root),
        "UWM.COCO_DIR", str(folder / "coco"), "UWM.NUM_FOLDS", "2",
        "OUTPUT_DIR", str(folder / "out"), "SOLVER.MAX_ITER", str(TRAIN_ITERATIONS),
        "SOLVER.BASE_LR", "0.01", "TEST.EVAL_PERIOD", "0", "UWM.VAL_LOSS_PERIOD", "0",
        "SOLVER.CHECKPOINT_PERIOD", "1000",
    ]  # fmt: skip
    result = run_tool("train_net", args, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return Model(SEMANTIC, ("MODEL.DEVICE", "cpu"), folder / "out" / "model_final.pth")


def untrained(config: str, folder: Path) -> Model:
    """A freshly initialised model of ``config`` that keeps every detection."""
    import torch
    from detectron2.modeling import build_model

    from uwm_d2.config import build_cfg

    opts = ("MODEL.DEVICE", "cpu", *KEEP_ALL_DETECTIONS)
    torch.manual_seed(0)
    model = build_model(build_cfg(REPO_ROOT / config, list(opts)))
    torch.save({"model": model.state_dict()}, folder / "model.pth")
    return Model(config, opts, folder / "model.pth")


@pytest.fixture(scope="session")
def untrained_mask_rcnn(tmp_path_factory: pytest.TempPathFactory) -> Model:
    return untrained(MASK_RCNN, tmp_path_factory.mktemp("mask_rcnn"))


@pytest.fixture(scope="session")
def untrained_combined(tmp_path_factory: pytest.TempPathFactory) -> Model:
    return untrained(COMBINED, tmp_path_factory.mktemp("combined"))


@pytest.fixture(scope="session")
def models(
    trained_semantic: Model, untrained_mask_rcnn: Model, untrained_combined: Model
) -> dict[str, Model]:
    return {
        "semantic": trained_semantic,
        "mask_rcnn": untrained_mask_rcnn,
        "combined": untrained_combined,
    }


@pytest.fixture(scope="session")
def exported(
    models: dict[str, Model], tmp_path_factory: pytest.TempPathFactory
) -> Callable[[str, str], Path]:
    """``exported(kind, format)``: the export folder of ``semantic``, ``mask_rcnn`` or
    ``combined``."""
    from uwm_d2.export.exporter import export_model

    made: dict[tuple[str, str], Path] = {}

    def export(kind: str, network_format: str) -> Path:
        if (kind, network_format) not in made:
            model = models[kind]
            out = tmp_path_factory.mktemp("export") / f"{kind}-{network_format}"
            export_model(
                str(REPO_ROOT / model.config), model.all_opts, network_format, out, tta=False
            )
            made[kind, network_format] = out
        return made[kind, network_format]

    return export
