"""The batched predictor and the submission pipeline, with a stand-in model of known output.

A fake Mask R-CNN returns, for every slice, one instance whose box covers a known part of the
*network input*; after the pipeline's resize back to the scan's own size the mask must cover the
matching part of the scan. On a 360x310 (W x H) scan a transposed paste would show at once.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("detectron2")
import torch
from detectron2.structures import Boxes, Instances

from uwm_d2.config import build_cfg
from uwm_d2.core.layout_reader import index_scans, read_prediction_csv
from uwm_d2.core.rle import rle_decode
from uwm_d2.inference import pipeline
from uwm_d2.inference.predictor import EnsembleMember, VolumePredictor
from uwm_d2.modeling.meta_arch import soft_instance_outputs

from ..conftest import INSTANT_CONFIG


class BoxModel(torch.nn.Module):
    """Predicts one ``class_index`` instance covering the input's top-left (x < 1/2, y < 1/4)."""

    def __init__(self, class_index: int = 1, score: float = 0.9) -> None:
        super().__init__()
        self.class_index = class_index
        self.score = score
        self.calls: list[int] = []

    def soft_outputs(self, batched_inputs):
        return soft_instance_outputs(self, batched_inputs)

    def inference(self, batched_inputs, do_postprocess=True):
        assert not do_postprocess
        self.calls.append(len(batched_inputs))
        results = []
        for item in batched_inputs:
            height, width = item["image"].shape[-2:]
            result = Instances((height, width))
            result.pred_boxes = Boxes(torch.tensor([[0.0, 0.0, width / 2, height / 4]]))
            result.scores = torch.tensor([self.score])
            result.pred_classes = torch.tensor([self.class_index])
            result.pred_masks = torch.ones(1, 1, 28, 28)
            results.append(result)
        return results


@pytest.fixture
def cfg():
    return build_cfg(INSTANT_CONFIG, ["MODEL.WEIGHTS", "unused.pth"])


def _run(monkeypatch, cfg, root, out, models, tta=False, batch_size=8, **kwargs):
    predictor = VolumePredictor([EnsembleMember(cfg, models)], tta=tta, batch_size=batch_size)
    return pipeline.predict_submission(predictor, root, out, progress=False, **kwargs)


def test_non_square_scan_is_not_transposed(monkeypatch, cfg, phantom_root, tmp_path):
    scans = index_scans(phantom_root, "test")
    wide = scans[(scans["width"] == 360) & (scans["height"] == 310)]
    assert not wide.empty, "the tiny phantom must hold a 360x310 test scan"
    model = BoxModel(class_index=1)
    summary = _run(monkeypatch, cfg, phantom_root, tmp_path / "sub.csv", [model], batch_size=3)
    frame = read_prediction_csv(summary.path)
    row = frame[(frame["id"] == wide["id"].iloc[0]) & (frame["class"] == "small_bowel")]
    mask = rle_decode(row["predicted"].iloc[0], (310, 360)).astype(bool)
    rows, columns = np.nonzero(mask)
    # Box x < W/2 = 180, y < H/4 = 77.5 of the scan (give or take the paste's pixel rounding).
    assert 176 <= columns.max() <= 181 and columns.min() == 0
    assert 74 <= rows.max() <= 79 and rows.min() == 0
    assert max(model.calls) == 3  # slices go through the model in batches


def test_rows_follow_the_sample_and_other_classes_stay_empty(
    monkeypatch, cfg, phantom_root, tmp_path
):
    summary = _run(monkeypatch, cfg, phantom_root, tmp_path / "sub.csv", [BoxModel(class_index=2)])
    frame = pd.read_csv(summary.path, keep_default_na=False)
    sample = pd.read_csv(phantom_root / "sample_submission.csv", keep_default_na=False)
    assert frame[["id", "class"]].equals(sample[["id", "class"]])
    assert (frame.loc[frame["class"] == "stomach", "predicted"] != "").all()
    assert (frame.loc[frame["class"] != "stomach", "predicted"] == "").all()


def test_score_threshold_and_ensemble_average(monkeypatch, cfg, phantom_root, tmp_path):
    low = BoxModel(score=0.3)  # under the 0.5 score threshold: contributes probability 0
    high = BoxModel(score=0.9)
    out = tmp_path / "sub.csv"
    # Mean of (1, 0) = 0.5 >= MASK_THRESHOLD 0.5: the ensemble keeps the mask...
    _run(monkeypatch, cfg, phantom_root, out, [high, low])
    assert (read_prediction_csv(out)["predicted"] != "").any()
    # ...but a threshold above the averaged probability drops it.
    strict = build_cfg(
        INSTANT_CONFIG, ["MODEL.WEIGHTS", "unused.pth", "UWM.EVAL.MASK_THRESHOLD", "0.6"]
    )
    _run(monkeypatch, strict, phantom_root, out, [high, low])
    assert (read_prediction_csv(out)["predicted"] == "").all()


def test_flip_tta_averages_the_mirrored_pass(monkeypatch, cfg, phantom_root, tmp_path):
    # The box covers the left half; its mirror covers the right half. Averaged, each half has
    # probability 0.5 >= 0.5, so with TTA the mask spans the width of the top quarter (but for
    # the outermost and the middle pixels, where a pasted mask's soft edge falls below 1).
    out = tmp_path / "sub.csv"
    _run(monkeypatch, cfg, phantom_root, out, [BoxModel()], tta=True)
    frame = read_prediction_csv(out)
    scans = index_scans(phantom_root, "test").set_index("id")
    slice_id = frame.loc[frame["predicted"] != "", "id"].iloc[0]
    height, width = scans.loc[slice_id, ["height", "width"]]
    mask = rle_decode(frame.loc[frame["predicted"] != "", "predicted"].iloc[0], (height, width))
    columns = np.nonzero(mask.any(axis=0))[0]
    assert columns.min() <= 4 and columns.max() >= width - 5
    assert (columns < width // 4).any() and (columns > 3 * width // 4).any()  # both halves


def test_header_only_for_an_empty_sample_and_sorted_rows_without_one(
    monkeypatch, cfg, phantom_copy, tmp_path
):
    empty = tmp_path / "empty_sample.csv"
    empty.write_text("id,class,predicted\n")
    out = tmp_path / "sub.csv"
    summary = _run(monkeypatch, cfg, phantom_copy, out, [BoxModel()], sample_submission=empty)
    assert summary.rows == 0 and out.read_text().strip() == "id,class,predicted"

    (phantom_copy / "sample_submission.csv").unlink()
    summary = _run(monkeypatch, cfg, phantom_copy, out, [BoxModel()])
    frame = read_prediction_csv(out)
    scans = index_scans(phantom_copy, "test")
    assert summary.rows == 3 * len(scans) == len(frame)
    assert frame["id"].iloc[::3].tolist() == scans["id"].tolist()


def test_missing_scan_listed_in_sample_is_a_clear_error(monkeypatch, cfg, phantom_root, tmp_path):
    sample = tmp_path / "sample.csv"
    sample.write_text("id,class,predicted\ncase999_day1_slice_0001,stomach,\n")
    out = tmp_path / "sub.csv"
    with pytest.raises(ValueError, match="case999_day1_slice_0001"):
        _run(monkeypatch, cfg, phantom_root, out, [BoxModel()], sample_submission=sample)
    assert not out.exists()


class SemanticSquareModel(torch.nn.Module):
    """A semantic model: probability ``value`` for ``class_index`` in the input's top-left
    quarter (x < 1/2, y < 1/2), 0 elsewhere, at the scan's own size."""

    def __init__(self, class_index: int, value: float) -> None:
        super().__init__()
        self.class_index, self.value = class_index, value

    def soft_outputs(self, batched_inputs):
        outputs = []
        for item in batched_inputs:
            maps = torch.zeros((3, item["height"], item["width"]))
            maps[self.class_index, : item["height"] // 2, : item["width"] // 2] = self.value
            outputs.append({"sem_seg": maps})
        return outputs


def test_an_ensemble_across_kinds_averages_by_member_weight(cfg, phantom_root, tmp_path):
    """An instance member (probability 1 in its box) and a semantic member (0.2 in its square,
    which holds the box) of the same class: in the box, weights 1:3 give 0.25 + 0.15 = 0.4
    (below the 0.5 cut: no mask) and weights 3:1 give 0.75 + 0.05 = 0.8 (a mask)."""
    scans = index_scans(phantom_root, "test")
    box, square = BoxModel(class_index=1), SemanticSquareModel(class_index=1, value=0.2)
    for weights, survives in (((1.0, 3.0), False), ((3.0, 1.0), True)):
        members = [
            EnsembleMember(cfg, [box], weight=weights[0]),
            EnsembleMember(cfg, [square], weight=weights[1]),
        ]
        out = tmp_path / "sub.csv"
        pipeline.predict_submission(VolumePredictor(members), phantom_root, out, progress=False)
        frame = read_prediction_csv(out)
        row = frame[(frame["id"] == scans["id"].iloc[0]) & (frame["class"] == "small_bowel")]
        assert (row["predicted"].iloc[0] != "") is survives, weights


def test_ensemble_file_is_read_and_checked(tmp_path):
    from uwm_d2.core.errors import UWMInputError
    from uwm_d2.inference.ensemble import override_rule, read_ensemble

    good = tmp_path / "ensemble.yaml"
    good.write_text(
        "members:\n"
        "  - config: a.yaml\n    weights: [x.pth, y.pth]\n    weight: 2\n"
        "  - config: b.yaml\n    weights: z.pth\n"
        "merge:\n  MASK_THRESHOLD: 0.4\n  CLEANUP_3D: true\n"
    )
    members, merge = read_ensemble(good)
    assert members == [
        {"config": "a.yaml", "weights": ["x.pth", "y.pth"], "weight": 2.0},
        {"config": "b.yaml", "weights": ["z.pth"], "weight": 1.0},
    ]
    from uwm_d2.core.merge import MergeRule

    rule = override_rule(MergeRule(), merge)
    assert rule.mask_threshold == 0.4 and rule.cleanup_3d
    for text, culprit in (
        ("members: []\n", "no members"),
        ("members:\n  - config: a.yaml\n", "member 1: needs both"),
        ("members:\n  - {config: a.yaml, weights: x.pth, weight: -1}\n", "positive number"),
        ("members:\n  - {config: a.yaml, weights: x.pth, colour: red}\n", "'colour'"),
        ("members:\n  - {config: a.yaml, weights: x.pth}\nmerge: {THRESHOLD: 1}\n", "THRESHOLD"),
        ("members: [\n", "not valid YAML"),
    ):
        bad = tmp_path / "bad.yaml"
        bad.write_text(text)
        with pytest.raises(UWMInputError, match=culprit) as caught:
            read_ensemble(bad)
        assert "\n" not in str(caught.value) and "bad.yaml" in str(caught.value)


@pytest.mark.parametrize(("device", "expected"), [("cpu", 1), ("cuda", 8), ("cuda:1", 8)])
def test_default_batch_size_follows_the_device(cfg, device: str, expected: int) -> None:
    # On the CPU batches are no faster (benchmarks/bench_infer.py); on a GPU they are.
    device_cfg = cfg.clone()
    device_cfg.defrost()
    device_cfg.MODEL.DEVICE = device
    predictor = VolumePredictor([EnsembleMember(device_cfg, [BoxModel()])])
    assert predictor.batch_size == expected
    assert VolumePredictor([EnsembleMember(device_cfg, [BoxModel()])], batch_size=3).batch_size == 3


def test_every_batch_size_gives_the_same_submission(monkeypatch, cfg, phantom_root, tmp_path):
    model = BoxModel()
    one = _run(monkeypatch, cfg, phantom_root, tmp_path / "one.csv", [model], batch_size=1)
    assert set(model.calls) == {1}
    five = _run(monkeypatch, cfg, phantom_root, tmp_path / "five.csv", [BoxModel()], batch_size=5)
    assert one.path.read_text() == five.path.read_text()


def test_saved_test_probabilities_are_the_maps_the_submission_was_cut_from(
    cfg, phantom_root, tmp_path
):
    from uwm_d2.core.errors import UWMInputError
    from uwm_d2.core.probability_files import ProbabilityFolder
    from uwm_d2.core.rle import rle_encode

    square = SemanticSquareModel(class_index=2, value=0.7)
    predictor = VolumePredictor([EnsembleMember(cfg, [square])], tta=False)
    saved, out = tmp_path / "probabilities", tmp_path / "sub.csv"
    pipeline.predict_submission(predictor, phantom_root, out, progress=False, probabilities=saved)
    folder = ProbabilityFolder(saved)
    scans = index_scans(phantom_root, "test")
    folder.check_coverage(sorted(set(scans["case_day"])))
    assert not folder.tta and all(folder.fold_of(day) is None for day in folder.case_days)
    rows = read_prediction_csv(out).set_index(["id", "class"])["predicted"]
    for maps in folder:
        masks = predictor.rule.volume_masks(maps.probabilities)
        for depth, slice_id in enumerate(maps.slice_ids):
            for class_index, name in enumerate(("large_bowel", "small_bowel", "stomach")):
                assert rows[(slice_id, name)] == rle_encode(masks[depth, class_index])
    assert rows.str.len().gt(0).any()
    # Maps of other models (here: with TTA) never land in the same folder.
    other = VolumePredictor([EnsembleMember(cfg, [square])], tta=True)
    with pytest.raises(UWMInputError, match="made without flip TTA"):
        pipeline.predict_submission(other, phantom_root, out, progress=False, probabilities=saved)
