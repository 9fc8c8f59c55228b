"""Every model kind trains, evaluates, infers and ensembles through the same pipeline (tiny runs).

Mask R-CNN goes through the tools in ``tests/test_end_to_end.py``; here the semantic kind and the
combined kind (Mask R-CNN + semantic head on one backbone) train a few iterations in-process,
are scored by ``UWMEvaluator`` at the end of training, and are then ensembled with each other
(and with flip TTA) into a submission that ``evaluate`` scores.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("detectron2")

import torch

from uwm_d2.config import build_cfg
from uwm_d2.data.register import register_from_cfg
from uwm_d2.engine import UWMTrainer
from uwm_d2.evaluation.csv_scoring import score_submission
from uwm_d2.inference.ensemble import build_predictor
from uwm_d2.inference.pipeline import predict_submission

from ..conftest import INSTANT_CONFIGS, REPO_ROOT

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

KINDS = {kind: REPO_ROOT / INSTANT_CONFIGS[kind] for kind in ("semantic", "combined")}


def _cfg(kind: str, instant_data: tuple[Path, Path], out: Path, *extra: str) -> Any:
    data_root, coco = instant_data
    return build_cfg(
        KINDS[kind],
        [
            "UWM.DATA_ROOT", str(data_root), "UWM.COCO_DIR", str(coco), "UWM.NUM_FOLDS", "2",
            "OUTPUT_DIR", str(out), "SOLVER.MAX_ITER", "2", "SOLVER.CHECKPOINT_PERIOD", "2",
            "TEST.EVAL_PERIOD", "0", "UWM.VAL_LOSS_PERIOD", "2", *extra,
        ],
    )  # fmt: skip


@pytest.fixture(scope="module")
def trained(
    instant_data: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """Each kind trained for two iterations: ``{kind: OUTPUT_DIR}``."""
    outputs = {}
    for kind in KINDS:
        out = tmp_path_factory.mktemp(kind)
        cfg = _cfg(kind, instant_data, out)
        register_from_cfg(cfg)
        trainer = UWMTrainer(cfg)
        trainer.resume_or_load(resume=False)
        trainer.train()
        outputs[kind] = out
    return outputs


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(KINDS))
def test_each_kind_trains_and_is_scored(kind: str, trained: dict[str, Path]) -> None:
    out = trained[kind]
    rows = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    losses = {key for row in rows for key in row if key.startswith("loss_")}
    assert {"loss_sem_seg_bce", "loss_sem_seg_dice"} <= losses
    assert ("loss_mask" in losses) is (kind == "combined")
    assert any("validation_loss" in row for row in rows)
    scored = json.loads((out / "inference" / "uwm_results_uwm_val.json").read_text())
    assert 0.0 <= scored["score"] <= 1.0 and scored["num_slices"] > 0
    assert (out / "model_final.pth").is_file() and (out / "model_best.pth").is_file()


def test_semantic_targets_keep_overlapping_classes() -> None:
    """The mapper's sem_seg is the per-class union of the instances: overlaps survive."""
    from detectron2.structures import BitMasks, Instances

    from uwm_d2.data.mapper import class_maps

    masks = torch.zeros((3, 6, 8), dtype=torch.bool)
    masks[0, :3, :3] = True  # large bowel, two pieces
    masks[1, 4:, 6:] = True
    masks[2, 1:4, 1:4] = True  # small bowel overlapping the first piece
    instances = Instances((6, 8))
    instances.gt_masks = BitMasks(masks)
    instances.gt_classes = torch.tensor([0, 0, 1])
    maps = class_maps(instances, 3)
    assert maps.dtype == torch.uint8 and tuple(maps.shape) == (3, 6, 8)
    assert torch.equal(maps[0].bool(), masks[0] | masks[1])
    assert torch.equal(maps[1].bool(), masks[2]) and not maps[2].any()
    assert maps[0, 2, 2] == maps[1, 2, 2] == 1  # one pixel, two classes
    empty = Instances((6, 8))
    empty.gt_masks = BitMasks(torch.zeros((0, 6, 8), dtype=torch.bool))
    empty.gt_classes = torch.zeros(0, dtype=torch.int64)
    assert not class_maps(empty, 3).any()


@pytest.mark.slow
def test_kinds_ensemble_into_one_submission(
    trained: dict[str, Path], instant_data: tuple[Path, Path], tmp_path: Path
) -> None:
    data_root, _ = instant_data
    ensemble = tmp_path / "ensemble.yaml"
    semantic, combined = (trained[kind] / "model_final.pth" for kind in ("semantic", "combined"))
    ensemble.write_text(
        "members:\n"
        f"  - config: {KINDS['semantic']}\n    weights: {semantic}\n"
        f"  - config: {KINDS['combined']}\n    weights: [{combined}]\n    weight: 2\n"
        "merge:\n  CLEANUP_3D: true\n"
    )
    predictor = build_predictor(None, ["MODEL.DEVICE", "cpu"], ensemble, tta=True, batch_size=4)
    assert [member.weight for member in predictor.members] == [1.0, 2.0]
    assert predictor.rule.cleanup_3d
    out = tmp_path / "submission.csv"
    summary = predict_submission(predictor, data_root, out, progress=False)
    assert summary.rows > 0
    result = score_submission(data_root, data_root / "test_truth.csv", out)
    assert 0.0 <= result["score"] <= 1.0

    # The ensemble's maps are the weighted mean of its members' maps.
    records = next(iter(_case_days(data_root).values()))
    both = predictor.predict_probabilities(records)
    alone = []
    for member in predictor.members:
        single = type(predictor)([member], tta=True, batch_size=4)
        alone.append(single.predict_probabilities(records))
    np.testing.assert_allclose(both, (alone[0] + 2 * alone[1]) / 3, atol=1e-6)


def _case_days(data_root: Path) -> dict[str, list[dict]]:
    from uwm_d2.core.layout_reader import index_scans
    from uwm_d2.inference.predictor import scan_records

    return scan_records(data_root, index_scans(data_root, "test"))


def test_multilabel_loss_ignores_padding_and_rewards_overlap() -> None:
    from uwm_d2.modeling.semantic import multilabel_losses

    targets = torch.zeros((1, 3, 4, 4), dtype=torch.uint8)
    targets[0, 0, :2, :2] = 1
    targets[0, 1, 1:3, 1:3] = 1  # overlaps class 0 at (1, 1)
    targets[0, :, 3, :] = 255  # padding row
    perfect = torch.where(targets == 1, 20.0, -20.0).float()
    perfect[0, :, 3, :] = 1000.0  # anything in the padding must not count
    losses = multilabel_losses(perfect, targets, ignore_value=255)
    assert losses["loss_sem_seg_bce"] < 1e-6 and losses["loss_sem_seg_dice"] < 1e-3
    wrong_losses = multilabel_losses(-perfect, targets, ignore_value=255)
    assert wrong_losses["loss_sem_seg_bce"] > 10 and wrong_losses["loss_sem_seg_dice"] > 0.9


def test_dice_leaves_absent_classes_to_the_bce() -> None:
    """An absent class must not be driven to probability 0 by the Dice term (it collapsed the
    stomach in training): its probabilities get no Dice gradient at all."""
    from uwm_d2.modeling.semantic import multilabel_losses

    targets = torch.zeros((2, 3, 8, 8), dtype=torch.uint8)
    targets[:, 0, 2:5, 2:5] = 1  # only class 0 is in the batch
    logits = torch.zeros((2, 3, 8, 8), requires_grad=True)
    multilabel_losses(logits, targets, ignore_value=255)["loss_sem_seg_dice"].backward()
    assert logits.grad[:, 0].abs().sum() > 0
    assert logits.grad[:, 1:].abs().sum() == 0
    nothing = multilabel_losses(logits, torch.zeros_like(targets), ignore_value=255)
    assert nothing["loss_sem_seg_dice"] == 0 and nothing["loss_sem_seg_dice"].requires_grad
