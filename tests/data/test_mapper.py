"""UWMDatasetMapper: 16-bit 2.5D input, masks that follow the image, non-square scans, empties."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("detectron2")

from detectron2.data import transforms as T
from detectron2.structures import BoxMode
from pycocotools import mask as mask_util

from uwm_d2.config import build_cfg
from uwm_d2.core.errors import UWMInputError
from uwm_d2.core.io import write_scan
from uwm_d2.data.inputs import attach_neighbor_files, build_model_input
from uwm_d2.data.mapper import UWMDatasetMapper, build_augmentations
from uwm_d2.data.transforms import (
    RandomAffine,
    RandomPhotometric,
    ResizeShortestEdgeCV2,
)

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

REPO = Path(__file__).resolve().parents[2]
INSTANT = REPO / "configs" / "quick_schedules" / "mask_rcnn_R_18_FPN_instant_test.yaml"
HEIGHT, WIDTH = 310, 360  # a 360x310 (W x H) scan
OFFSETS = (-2, 0, 2)


def _object_mask() -> np.ndarray:
    """An asymmetric bright object: an off-centre ellipse (a transpose or flip would show)."""
    yy, xx = np.mgrid[:HEIGHT, :WIDTH]
    return ((yy - 80) / 35.0) ** 2 + ((xx - 250) / 60.0) ** 2 <= 1.0


def _encode(mask: np.ndarray) -> dict[str, Any]:
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


@pytest.fixture(scope="module")
def scans(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """Records of one 360x310 case-day of 6 slices: slice 3 has the object, the rest are empty."""
    folder = tmp_path_factory.mktemp("mapper") / "case1" / "case1_day0" / "scans"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    mask = _object_mask()
    records = []
    for number in range(1, 7):
        image = rng.integers(800, 3000, size=(HEIGHT, WIDTH)).astype(np.uint16)
        annotations = []
        if number == 3:
            image[mask] = 30000  # far above 255: 16-bit values
            ys, xs = np.nonzero(mask)
            box = [int(xs.min()), int(ys.min()), int(np.ptp(xs)) + 1, int(np.ptp(ys)) + 1]
            annotations.append(
                {
                    "bbox": box,
                    "bbox_mode": BoxMode.XYWH_ABS,
                    "segmentation": _encode(mask),
                    "category_id": 2,
                    "iscrowd": 0,
                }
            )
        path = folder / f"slice_{number:04d}_{WIDTH}_{HEIGHT}_1.50_1.50.png"
        write_scan(path, image)
        records.append(
            {
                "file_name": str(path),
                "height": HEIGHT,
                "width": WIDTH,
                "image_id": number,
                "slice_id": f"case1_day0_slice_{number:04d}",
                "case_day": "case1_day0",
                "slice": number,
                "annotations": annotations,
            }
        )
    attach_neighbor_files(records, OFFSETS)
    return records


def _mapper(augmentations: list, is_train: bool = True) -> UWMDatasetMapper:
    return UWMDatasetMapper(is_train, augmentations=augmentations, slice_offsets=OFFSETS)


def _assert_mask_on_object(out: dict[str, Any]) -> np.ndarray:
    """The (single) mask covers the bright pixels of the centre channel and nothing else."""
    image = out["image"].numpy()[1]  # centre channel: the annotated slice itself
    masks = out["instances"].gt_masks.tensor.numpy()
    assert masks.shape == (1, *image.shape)
    mask, bright = masks[0], image > 0.5 * image.max()
    overlap = np.count_nonzero(mask & bright)
    assert overlap / np.count_nonzero(mask) > 0.95  # the mask lies on the object
    assert overlap / np.count_nonzero(bright) > 0.95  # the object lies under the mask
    return mask


def test_output_of_a_non_square_scan(scans: list[dict[str, Any]]) -> None:
    out = _mapper([])(scans[2])
    assert tuple(out["image"].shape) == (3, HEIGHT, WIDTH)
    assert out["height"] == HEIGHT and out["width"] == WIDTH
    assert out["slice_id"] == "case1_day0_slice_0003" and out["case_day"] == "case1_day0"
    np.testing.assert_array_equal(out["instances"].gt_masks.tensor.numpy()[0], _object_mask())
    assert out["instances"].gt_classes.tolist() == [2]
    resized = _mapper([ResizeShortestEdgeCV2(384, 1000)])(scans[2])
    assert tuple(resized["image"].shape) == (3, 384, round(384 * WIDTH / HEIGHT))
    assert resized["height"] == HEIGHT and resized["width"] == WIDTH  # predictions come back here


def test_image_is_the_shared_model_input(scans: list[dict[str, Any]]) -> None:
    """No augmentation: the tensor is exactly build_model_input of the record's channel files."""
    record = scans[1]
    assert record["neighbor_files"] == [scans[i]["file_name"] for i in (0, 1, 3)]
    out = _mapper([])(record)
    expected = build_model_input(record["neighbor_files"]).transpose(2, 0, 1)
    np.testing.assert_array_equal(out["image"].numpy(), expected)
    assert out["image"].dtype.is_floating_point and float(out["image"].max()) <= 255.0


@pytest.mark.parametrize(
    "augmentation",
    [
        pytest.param(lambda: T.RandomFlip(prob=1.0, horizontal=True), id="flip"),
        pytest.param(lambda: RandomAffine(30.0, 0.0, prob=1.0), id="rotation"),
        pytest.param(lambda: RandomAffine(0.0, 0.15, prob=1.0), id="shift"),
        pytest.param(lambda: ResizeShortestEdgeCV2((160, 448), 1000, "range"), id="resize"),
        pytest.param(lambda: RandomPhotometric(0.1, 0.3, 0.4, prob=1.0), id="photometric"),
    ],
)
def test_masks_follow_the_image(scans: list[dict[str, Any]], augmentation: Any) -> None:
    mapper = _mapper([augmentation()])
    np.random.seed(0)
    for _ in range(4):
        _assert_mask_on_object(mapper(scans[2]))


def test_flip_mirrors_image_and_mask(scans: list[dict[str, Any]]) -> None:
    out = _mapper([T.RandomFlip(prob=1.0, horizontal=True)])(scans[2])
    mask = _assert_mask_on_object(out)
    np.testing.assert_array_equal(mask, _object_mask()[:, ::-1])
    x0, y0, x1, y1 = out["instances"].gt_boxes.tensor[0].tolist()
    ys, xs = np.nonzero(mask)
    assert (x0, y0, x1, y1) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)  # tight box


def test_every_configured_augmentation_together(scans: list[dict[str, Any]]) -> None:
    cfg = build_cfg(
        INSTANT,
        [
            "UWM.AUG.HFLIP_PROB", "1.0",
            "UWM.AUG.AFFINE_PROB", "1.0",
            "UWM.AUG.PHOTOMETRIC_PROB", "1.0",
            "INPUT.MIN_SIZE_TRAIN", "(200, 300)",
            "INPUT.MAX_SIZE_TRAIN", "1000",
        ],
    )  # fmt: skip
    mapper = UWMDatasetMapper(cfg, is_train=True)
    assert len(mapper.augmentations.augs) == 4
    np.random.seed(1)
    for _ in range(4):
        out = mapper(scans[2])
        _assert_mask_on_object(out)
        assert min(out["image"].shape[1:]) in (200, 300)


def test_empty_slice_gives_empty_instances(scans: list[dict[str, Any]]) -> None:
    out = _mapper([RandomAffine(10.0, 0.05, prob=1.0)])(scans[0])
    instances = out["instances"]
    assert len(instances) == 0
    assert tuple(instances.gt_masks.tensor.shape) == (0, HEIGHT, WIDTH)
    assert tuple(instances.gt_boxes.tensor.shape) == (0, 4)


def test_object_moved_out_of_the_frame_is_dropped(scans: list[dict[str, Any]]) -> None:
    class ShiftOut(T.Augmentation):
        def get_transform(self, image: np.ndarray) -> T.Transform:
            from uwm_d2.data.transforms import AffineTransform

            matrix = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 300.0]])  # 300 px down
            return AffineTransform(matrix, *image.shape[:2])

    assert len(_mapper([ShiftOut()])(scans[2])["instances"]) == 0


def test_test_mode_drops_annotations_unless_asked(scans: list[dict[str, Any]]) -> None:
    out = _mapper([], is_train=False)(scans[2])
    assert "instances" not in out and "annotations" not in out
    kept = UWMDatasetMapper(False, augmentations=[], keep_annotations=True)(scans[2])
    assert len(kept["instances"]) == 1


def test_mapper_leaves_the_dataset_dict_alone(scans: list[dict[str, Any]]) -> None:
    record = scans[2]
    before = repr(record)
    _mapper([T.RandomFlip(prob=1.0)])(record)
    assert repr(record) == before


def test_neighbor_files_must_match_offsets(scans: list[dict[str, Any]]) -> None:
    mapper = UWMDatasetMapper(True, augmentations=[], slice_offsets=(-1, 0, 1, 2, 3))
    with pytest.raises(UWMInputError, match="neighbor_files"):
        mapper(scans[2])


def test_build_augmentations_from_config() -> None:
    cfg = build_cfg(INSTANT, ["UWM.AUG.HFLIP_PROB", "0.0"])
    train = build_augmentations(cfg, is_train=True)
    assert [type(a).__name__ for a in train] == [
        "RandomPhotometric",
        "RandomAffine",
        "ResizeShortestEdgeCV2",
    ]
    test = build_augmentations(cfg, is_train=False)
    assert [type(a).__name__ for a in test] == ["ResizeShortestEdgeCV2"]
    assert build_augmentations(build_cfg(INSTANT, ["INPUT.MIN_SIZE_TEST", "0"]), False) == []
