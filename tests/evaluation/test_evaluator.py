"""UWMEvaluator on hand-made Instances, checked against the core metric computed directly."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("detectron2")

import torch
from detectron2.data import DatasetCatalog
from detectron2.structures import Boxes, Instances
from pycocotools import mask as mask_util

from uwm_d2.core.ids import CLASSES
from uwm_d2.core.merge import MergeRule, remove_single_slice_components
from uwm_d2.core.readings import score_volumes
from uwm_d2.data.coco import make_coco
from uwm_d2.data.register import register_uwm_datasets
from uwm_d2.evaluation.evaluator import UWMEvaluator, flatten_result
from uwm_d2.modeling.meta_arch import soft_instance_outputs
from uwm_d2.modeling.probabilities import SoftOutputs, class_probabilities

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
DATASET = "uwm_val_fold0"


@pytest.fixture(scope="module")
def records(phantom_root: Path, tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    coco = tmp_path_factory.mktemp("coco") / "coco"
    make_coco(phantom_root, coco, num_folds=2, workers=1, progress=False)
    register_uwm_datasets(coco, phantom_root)
    return DatasetCatalog.get(DATASET)


def _truth(record: dict) -> np.ndarray:
    """(3, H, W) truth, decoded here one annotation at a time (independent of the evaluator)."""
    truth = np.zeros((3, record["height"], record["width"]), dtype=bool)
    for ann in record["annotations"]:
        truth[ann["category_id"]] |= mask_util.decode(ann["segmentation"]).astype(bool)
    return truth


def _instances(
    masks: list[np.ndarray], scores: list[float], classes: list[int], shape
) -> Instances:
    instances = Instances(shape)
    stacked = np.stack(masks) if masks else np.zeros((0, *shape), dtype=bool)
    instances.pred_masks = torch.from_numpy(stacked)
    instances.scores = torch.tensor(scores, dtype=torch.float32)
    instances.pred_classes = torch.tensor(classes, dtype=torch.int64)
    instances.pred_boxes = Boxes(torch.zeros((len(masks), 4)))
    return instances


def _blob(shape: tuple[int, int], y: int, x: int, r: int = 6) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - y) ** 2 + (xx - x) ** 2 <= r * r


def _expected(
    records: list[dict],
    preds: dict[str, np.ndarray],
    cleanup: bool = False,
    readings: str | tuple[str, ...] = "all",
) -> dict:
    """The core metric on volumes built here; ``readings`` as the evaluator's default."""
    volumes, spacings = {}, {}
    case_days = sorted({r["case_day"] for r in records})
    for case_day in case_days:
        group = sorted((r for r in records if r["case_day"] == case_day), key=lambda r: r["slice"])
        truth = np.stack([_truth(r) for r in group])
        pred = np.stack([preds.get(r["slice_id"], np.zeros_like(_truth(r))) for r in group])
        spacings[case_day] = group[0]["spacing"]
        for c, name in enumerate(CLASSES):
            p = remove_single_slice_components(pred[:, c]) if cleanup else pred[:, c]
            volumes[(case_day, name)] = (p, truth[:, c])
    return score_volumes(volumes, spacings, readings=readings)


def _run(evaluator: UWMEvaluator, records: list[dict], outputs: dict[str, Instances]) -> dict:
    evaluator.reset()
    items = [r for r in records if r["slice_id"] in outputs]
    for start in range(0, len(items), 2):  # batches of two, as a loader would give
        batch = items[start : start + 2]
        evaluator.process(batch, [{"instances": outputs[r["slice_id"]]} for r in batch])
    return evaluator.evaluate()


def test_perfect_prediction_scores_one(records: list[dict]) -> None:
    outputs = {}
    for record in records:
        truth = _truth(record)
        present = [c for c in range(3) if truth[c].any()]
        shape = (record["height"], record["width"])
        outputs[record["slice_id"]] = _instances(
            [truth[c] for c in present], [0.9] * len(present), present, shape
        )
    result = _run(UWMEvaluator(DATASET, distributed=False), records, outputs)["uwm"]
    assert result["score"] == pytest.approx(1.0)
    assert result["dice"] == 1.0 and result["hausdorff"] == 0.0
    assert result["num_slices"] == len(records)


def test_against_the_core_metric(records: list[dict], tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    outputs, preds = {}, {}
    for index, record in enumerate(records):
        shape = (record["height"], record["width"])
        truth = _truth(record)
        masks, scores, classes = [], [], []
        expected = np.zeros_like(truth)
        for c in range(3):
            if truth[c].any() and rng.random() < 0.8:  # sometimes miss an organ
                masks.append(truth[c] ^ _blob(shape, 40, 40, 3))  # and get it slightly wrong
                scores.append(0.9)
                classes.append(c)
                expected[c] |= masks[-1]
        if index % 3 == 0:  # a confident false positive, and a weak one the threshold removes
            masks += [_blob(shape, 100, 120), _blob(shape, 150, 60)]
            scores += [0.8, 0.3]
            classes += [0, 2]
            expected[0] |= masks[-2]
        if index % 4 == 1:
            continue  # no prediction at all for this slice: scored as empty
        outputs[record["slice_id"]] = _instances(masks, scores, classes, shape)
        preds[record["slice_id"]] = expected
    evaluator = UWMEvaluator(DATASET, MergeRule(), distributed=False, output_dir=tmp_path)
    result = _run(evaluator, records, outputs)
    expected = _expected(records, preds)
    assert set(result) == {"uwm"}
    flat = result["uwm"]
    assert flat == pytest.approx(flatten_result(expected))
    assert 0.0 < flat["score"] < 1.0
    assert all(isinstance(v, float) and math.isfinite(v) for v in flat.values())
    for name in CLASSES:
        assert f"dice/{name}" in flat and f"hausdorff/{name}" in flat and f"score/{name}" in flat
    written = json.loads((tmp_path / f"uwm_results_{DATASET}.json").read_text())
    assert written["score"] == pytest.approx(flat["score"])
    assert written["per_class"]["stomach"]["dice"] == pytest.approx(flat["dice/stomach"])

    cleaned = UWMEvaluator(DATASET, MergeRule(cleanup_3d=True), distributed=False)
    cleaned_flat = _run(cleaned, records, outputs)["uwm"]
    assert cleaned_flat == pytest.approx(flatten_result(_expected(records, preds, cleanup=True)))


def _slightly_wrong(records: list[dict]) -> tuple[dict[str, Instances], dict[str, np.ndarray]]:
    """Outputs that get every organ a little wrong and skip every third slice, and the masks
    the evaluator must see for them (``{slice_id: (3, H, W)}``)."""
    outputs, preds = {}, {}
    for index, record in enumerate(records):
        if index % 3 == 2:
            continue  # no prediction: scored as empty
        shape = (record["height"], record["width"])
        truth = _truth(record)
        present = [c for c in range(3) if truth[c].any()]
        masks = [truth[c] ^ _blob(shape, 40 + 10 * c, 40 + index % 7, 4) for c in present]
        outputs[record["slice_id"]] = _instances(masks, [0.9] * len(masks), present, shape)
        preds[record["slice_id"]] = np.zeros_like(truth)
        for c, mask in zip(present, masks, strict=True):
            preds[record["slice_id"]][c] = mask
    return outputs, preds


def test_other_readings_are_reported_beside_the_score(records: list[dict], tmp_path: Path) -> None:
    outputs, preds = _slightly_wrong(records)
    evaluator = UWMEvaluator(DATASET, distributed=False, output_dir=tmp_path)
    flat = _run(evaluator, records, outputs)["uwm"]
    expected = _expected(records, preds, readings="all")
    # The default reading stays the top level: uwm/score is what the best checkpoint follows.
    assert flat["score"] == pytest.approx(expected["score"])
    assert flat["score"] == pytest.approx(expected["readings"]["project"]["score"])
    for reading in ("competition", "mlebench"):
        for key in ("score", "dice", "hausdorff"):
            assert flat[f"{reading}/{key}"] == pytest.approx(expected["readings"][reading][key])
    assert not any(key.startswith("project/") for key in flat)
    # Really other readings: empty rows count 0 in the competition's text, are skipped by
    # MLE-bench, so their Dice differ from the project's (which counts them 1).
    assert flat["competition/dice"] < flat["dice"]
    assert flat["mlebench/dice"] != pytest.approx(flat["dice"])
    assert all(isinstance(v, float) and math.isfinite(v) for v in flat.values())
    written = json.loads((tmp_path / f"uwm_results_{DATASET}.json").read_text())
    assert list(written["readings"]) == ["project", "competition", "mlebench"]
    assert written["readings"]["mlebench"]["score"] == pytest.approx(flat["mlebench/score"])
    assert written["readings"]["competition"]["num_dice_rows"] == 3 * len(records)

    alone = _run(UWMEvaluator(DATASET, distributed=False, readings=()), records, outputs)["uwm"]
    assert alone == pytest.approx(flatten_result(_expected(records, preds, readings=())))
    assert not any(key.split("/")[0] in ("competition", "mlebench") for key in alone)
    one = _run(UWMEvaluator(DATASET, distributed=False, readings="mlebench"), records, outputs)
    assert "mlebench/score" in one["uwm"] and "competition/score" not in one["uwm"]
    with pytest.raises(ValueError, match="unknown reading 'kaggle'"):
        UWMEvaluator(DATASET, readings="kaggle")


def test_a_reading_with_nothing_to_average_writes_no_nan(
    records: list[dict], tmp_path: Path
) -> None:
    """Empty truth and empty predictions: MLE-bench's grader gets NaN; the metrics leave it out."""
    name = "uwm_test_everything_empty"
    empty_records = [{**record, "annotations": []} for record in records]
    if name not in DatasetCatalog.list():
        DatasetCatalog.register(name, lambda: [dict(record) for record in empty_records])
    outputs = {
        r["slice_id"]: _instances([], [], [], (r["height"], r["width"])) for r in empty_records
    }
    evaluator = UWMEvaluator(name, distributed=False, output_dir=tmp_path)
    flat = _run(evaluator, empty_records, outputs)["uwm"]
    expected = _expected(empty_records, {}, readings="all")
    assert expected["readings"]["mlebench"]["score"] is None
    assert all(isinstance(v, float) and math.isfinite(v) for v in flat.values())
    assert not any(key.startswith("mlebench/") for key in flat)
    assert flat["score"] == 1.0
    assert flat["competition/score"] == pytest.approx(expected["readings"]["competition"]["score"])
    written = json.loads((tmp_path / f"uwm_results_{name}.json").read_text())
    assert written["readings"]["mlebench"]["score"] is None  # null in the file, not NaN


def test_flatten_result_without_the_clinical_block() -> None:
    truth = np.zeros((4, 8, 10), dtype=bool)
    truth[1:3, 2:5, 2:6] = True
    pred = np.roll(truth, 1, axis=2)
    volumes = {("case1_day0", name): (pred, truth) for name in CLASSES}
    result = score_volumes(volumes, clinical=False, readings="all")
    assert "clinical" not in result
    flat = flatten_result(result)
    assert not any(key.startswith(("dice_3d/", "hd95_mm/")) for key in flat)
    assert flat["score"] == pytest.approx(result["score"])
    assert flat["mlebench/hausdorff"] == pytest.approx(result["readings"]["mlebench"]["hausdorff"])


def test_thresholds_and_min_area(records: list[dict]) -> None:
    record = records[0]
    shape = (record["height"], record["width"])
    big, small = _blob(shape, 50, 50, 10), _blob(shape, 120, 120, 2)  # 317 and 13 pixels
    instances = _instances([big, small, big], [0.6, 0.9, 0.6], [0, 1, 2], shape)
    rule = MergeRule((0.5, 0.5, 0.7), min_area=20)
    masks = rule.binarize(class_probabilities({"instances": instances}, rule))
    assert masks.shape == (3, *shape) and masks.dtype == bool
    np.testing.assert_array_equal(masks[0], big)
    assert not masks[1].any()  # too small
    assert not masks[2].any()  # below its class threshold
    soft = {"instances": _instances([big.astype(np.float32) * 0.6], [0.9], [1], shape)}
    for threshold, expected in ((0.5, True), (0.7, False)):
        cut = MergeRule(mask_threshold=threshold)
        assert bool(cut.binarize(class_probabilities(soft, cut))[1].any()) is expected
    empty = class_probabilities({"instances": _instances([], [], [], shape)}, MergeRule())
    assert empty.shape == (3, *shape) and not empty.any()


def test_semantic_and_combined_outputs_take_the_same_path(records: list[dict]) -> None:
    """Semantic maps pass through; with both kinds the rule's semantic_weight averages them."""
    shape = (records[0]["height"], records[0]["width"])
    semantic = torch.zeros((3, *shape))
    semantic[1, :10, :10] = 0.8
    instances = _instances([_blob(shape, 5, 5, 3)], [0.9], [1], shape)
    alone = class_probabilities({"sem_seg": semantic}, MergeRule())
    np.testing.assert_allclose(alone, semantic.numpy())
    both = class_probabilities({"sem_seg": semantic, "instances": instances}, MergeRule())
    inside, semantic_only = both[1, 5, 5], both[1, 0, 9]  # in the blob; in the square only
    assert inside == pytest.approx(0.5 * 1.0 + 0.5 * 0.8) and semantic_only == pytest.approx(0.4)
    with pytest.raises(ValueError, match="instances"):
        class_probabilities({}, MergeRule())


class _FakeRCNN(torch.nn.Module):
    """Returns one whole-image instance whose mask probability is ``probability`` everywhere."""

    def __init__(self, probability: float) -> None:
        super().__init__()
        self.probability = probability

    def inference(self, batched_inputs: list[dict], do_postprocess: bool = True) -> list[Instances]:
        assert not do_postprocess
        results = []
        for item in batched_inputs:
            height, width = item["image"].shape[1:]
            instances = Instances((height, width))
            instances.pred_boxes = Boxes(torch.tensor([[0.0, 0.0, width, height]]))
            instances.scores = torch.tensor([0.9])
            instances.pred_classes = torch.tensor([2])
            instances.pred_masks = torch.full((1, 1, 28, 28), self.probability)
            results.append(instances)
        return results


def test_postprocess_soft_keeps_probabilities() -> None:
    """detectron2 0.6's detector_postprocess(mask_threshold=-1) gives bool masks; ours does not."""
    from detectron2.modeling.postprocessing import detector_postprocess

    from uwm_d2.modeling.postprocess import postprocess_soft

    (raw,) = _FakeRCNN(0.6).inference([{"image": torch.zeros(3, 64, 74)}], do_postprocess=False)
    assert detector_postprocess(raw, 310, 360, mask_threshold=-1.0).pred_masks.dtype == torch.bool
    soft = postprocess_soft(raw, 310, 360)
    assert soft.pred_masks.dtype == torch.float32 and tuple(soft.pred_masks.shape) == (1, 310, 360)
    assert float(soft.pred_masks[0, 150, 180]) == pytest.approx(0.6, abs=1 / 255)
    assert soft.image_size == (310, 360) and soft.scores.tolist() == pytest.approx([0.9])
    assert not soft.has("uwm_row")


@pytest.mark.parametrize(("threshold", "expected"), [(0.5, True), (0.7, False)])
def test_mask_threshold_reaches_the_pasted_masks(threshold: float, expected: bool) -> None:
    fake = _FakeRCNN(0.6)
    fake.soft_outputs = lambda inputs: soft_instance_outputs(fake, inputs)
    inputs = [{"image": torch.zeros(3, 64, 74), "height": 310, "width": 360}]
    (output,) = SoftOutputs(fake)(inputs)
    probabilities = output["instances"].pred_masks
    assert tuple(probabilities.shape) == (1, 310, 360) and probabilities.is_floating_point()
    rule = MergeRule(mask_threshold=threshold)
    masks = rule.binarize(class_probabilities(output, rule))
    assert bool(masks[2, 150, 180]) is expected  # the middle of the instance (class 2)


def test_non_main_rank_returns_nothing(
    records: list[dict], monkeypatch: pytest.MonkeyPatch
) -> None:
    from uwm_d2.evaluation import evaluator as module

    monkeypatch.setattr(module.comm, "gather", lambda data, dst=0: [])
    monkeypatch.setattr(module.comm, "is_main_process", lambda: False)
    evaluator = UWMEvaluator(DATASET, distributed=True)
    evaluator.reset()
    assert evaluator.evaluate() == {}


def test_the_volume_steps_see_each_case_day_whole(records: list[dict]) -> None:
    """z-smoothing and 3D steps act on whole case-days: the score is the rule's volume masks'."""
    rng = np.random.default_rng(5)
    rule = MergeRule(z_smoothing=(0.5, 1.0, 0.0), min_slices_3d=(1, 2, 3), min_component_2d=5)
    outputs, maps = {}, {}
    for record in records:
        semantic = _truth(record).astype(np.float32) * rng.uniform(0.4, 1.0, (3, 1, 1))
        semantic[:, 30:34, 30:34] += rng.uniform(0.0, 0.9, (3, 1, 1)).astype(np.float32)
        semantic = np.clip(semantic, 0, 1).astype(np.float32)
        outputs[record["slice_id"]] = {"sem_seg": torch.from_numpy(semantic)}
        maps[record["slice_id"]] = semantic
    evaluator = UWMEvaluator(DATASET, rule, distributed=False, readings=())
    evaluator.reset()
    for record in records:
        evaluator.process([record], [outputs[record["slice_id"]]])
    flat = evaluator.evaluate()["uwm"]
    preds = {}
    for case_day in sorted({r["case_day"] for r in records}):
        group = sorted((r for r in records if r["case_day"] == case_day), key=lambda r: r["slice"])
        masks = rule.volume_masks(np.stack([maps[r["slice_id"]] for r in group]))
        preds.update({r["slice_id"]: masks[depth] for depth, r in enumerate(group)})
    assert flat == pytest.approx(flatten_result(_expected(records, preds, readings=())))
    plain = UWMEvaluator(DATASET, MergeRule(), distributed=False, readings=())
    plain.reset()
    for record in records:
        plain.process([record], [outputs[record["slice_id"]]])
    assert plain.evaluate()["uwm"]["score"] != pytest.approx(flat["score"])
