"""UWMDatasetMapper: 16-bit 2.5D input, masks that follow the image, non-square scans, empties."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("detectron2")

import torch
from detectron2.data import transforms as T
from detectron2.structures import BoxMode
from pycocotools import mask as mask_util

from uwm_d2.config import build_cfg
from uwm_d2.core.errors import UWMInputError
from uwm_d2.core.io import read_scan, write_scan
from uwm_d2.data.cache import ScanCache, SliceLRU
from uwm_d2.data.inputs import attach_neighbor_files, build_model_input
from uwm_d2.data.mapper import UWMDatasetMapper, build_augmentations
from uwm_d2.data.transforms import (
    RandomAffine,
    RandomPhotometric,
    ResizeShortestEdgeCV2,
)

from ..conftest import INSTANT_CONFIG

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

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


def test_every_configured_augmentation_together(
    scans: list[dict[str, Any]], tmp_path: Path
) -> None:
    cfg = build_cfg(
        INSTANT_CONFIG,
        [
            "OUTPUT_DIR", str(tmp_path),  # the training mapper's scan cache goes in there
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
    cfg = build_cfg(INSTANT_CONFIG, ["UWM.AUG.HFLIP_PROB", "0.0"])
    train = build_augmentations(cfg, is_train=True)
    assert [type(a).__name__ for a in train] == [
        "RandomPhotometric",
        "RandomAffine",
        "ResizeShortestEdgeCV2",
    ]
    test = build_augmentations(cfg, is_train=False)
    assert [type(a).__name__ for a in test] == ["ResizeShortestEdgeCV2"]
    assert build_augmentations(build_cfg(INSTANT_CONFIG, ["INPUT.MIN_SIZE_TEST", "0"]), False) == []


# -- the fast paths: packed masks, caching readers, data-loader workers --------------------------


@pytest.fixture(scope="module")
def crowded(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """A 360x310 case-day of 5 slices; slice 3 has 21 overlapping instances of all 3 classes."""
    folder = tmp_path_factory.mktemp("crowded") / "case2" / "case2_day1" / "scans"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:HEIGHT, :WIDTH]
    records = []
    for number in range(1, 6):
        image = rng.integers(800, 3000, size=(HEIGHT, WIDTH)).astype(np.uint16)
        annotations = []
        for index in range(21 if number == 3 else 0):
            cy, cx = rng.uniform(20, HEIGHT - 20), rng.uniform(20, WIDTH - 20)
            mask = ((yy - cy) / rng.uniform(5, 40)) ** 2 + ((xx - cx) / rng.uniform(5, 60)) ** 2
            mask = mask <= 1.0
            if index == 20:
                mask = (yy > HEIGHT - 4) & (xx < 30)  # a sliver at the border: warped away often
            image[mask] = 20000 + 300 * index
            ys, xs = np.nonzero(mask)
            annotations.append(
                {
                    "bbox": [
                        int(xs.min()),
                        int(ys.min()),
                        int(np.ptp(xs)) + 1,
                        int(np.ptp(ys)) + 1,
                    ],
                    "bbox_mode": BoxMode.XYWH_ABS,
                    "segmentation": _encode(mask),
                    "category_id": index % 3,
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
                "image_id": 100 + number,
                "slice_id": f"case2_day1_slice_{number:04d}",
                "case_day": "case2_day1",
                "slice": number,
                "annotations": annotations,
            }
        )
    attach_neighbor_files(records, OFFSETS)
    return records


def _reference(mapper: UWMDatasetMapper, record: dict[str, Any]) -> dict[str, Any]:
    """The mapper's output computed plainly: each mask decoded and transformed on its own,
    detectron2's boxes, class_maps. Replays the mapper's random draws (same seed before)."""
    from detectron2.structures import BitMasks, Instances

    from uwm_d2.data.mapper import class_maps

    image = build_model_input(record["neighbor_files"])
    aug_input = T.AugInput(image)
    transforms = mapper.augmentations(aug_input)
    masks = [
        transforms.apply_segmentation(mask_util.decode(obj["segmentation"]))
        for obj in record["annotations"]
    ]
    classes = np.array([obj["category_id"] for obj in record["annotations"]], dtype=np.int64)
    masks = np.stack(masks).astype(bool)
    keep = masks.reshape(len(masks), -1).any(axis=1)
    instances = Instances(aug_input.image.shape[:2])
    instances.gt_masks = BitMasks(torch.from_numpy(masks[keep]))
    instances.gt_boxes = instances.gt_masks.get_bounding_boxes()
    instances.gt_classes = torch.from_numpy(classes[keep])
    return {
        "image": aug_input.image.transpose(2, 0, 1),
        "instances": instances,
        "sem_seg": class_maps(instances, 3),
    }


def test_crowded_slice_equals_the_plain_per_mask_computation(
    crowded: list[dict[str, Any]],
) -> None:
    cfg = build_cfg(
        INSTANT_CONFIG,
        [
            "UWM.AUG.AFFINE_PROB", "1.0",
            "UWM.AUG.PHOTOMETRIC_PROB", "1.0",
            "UWM.AUG.ROTATION_DEG", "25.0",
            "UWM.AUG.SHIFT_FRACTION", "0.1",
            "INPUT.MIN_SIZE_TRAIN", "(200, 384, 450)",
            "INPUT.MAX_SIZE_TRAIN", "1000",
            "UWM.SCAN_CACHE", "False",
        ],
    )  # fmt: skip
    mapper = UWMDatasetMapper(cfg, is_train=True)
    dropped = 0
    for seed in range(12):
        np.random.seed(seed)
        out = mapper(crowded[2])
        np.random.seed(seed)
        expected = _reference(mapper, crowded[2])
        np.testing.assert_array_equal(out["image"].numpy(), expected["image"])
        got, want = out["instances"], expected["instances"]
        assert torch.equal(got.gt_masks.tensor, want.gt_masks.tensor)
        assert torch.equal(got.gt_boxes.tensor, want.gt_boxes.tensor)
        assert torch.equal(got.gt_classes, want.gt_classes)
        assert got.gt_boxes.tensor.dtype == torch.float32 and got.gt_classes.dtype == torch.int64
        assert out["sem_seg"].dtype == torch.uint8
        assert torch.equal(out["sem_seg"], expected["sem_seg"])
        # All outputs are views of one storage: a worker hands the sample over in one piece.
        tensors = [out["image"], out["sem_seg"], got.gt_masks.tensor, got.gt_boxes.tensor]
        assert len({t.untyped_storage().data_ptr() for t in [*tensors, got.gt_classes]}) == 1
        assert all(t.is_contiguous() for t in tensors)
        dropped += 21 - len(got)
    assert dropped > 0  # the border sliver was warped out of the frame at least once


def test_rle_of_another_size_names_the_file(crowded: list[dict[str, Any]]) -> None:
    record = copy.deepcopy(crowded[2])
    record["annotations"][0]["segmentation"] = _encode(np.ones((10, 12), dtype=bool))
    with pytest.raises(UWMInputError, match=r"slice_0003.*size \[10, 12\]"):
        _mapper([])(record)


def _outputs_equal(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["sem_seg"], b["sem_seg"])
    assert torch.equal(a["instances"].gt_masks.tensor, b["instances"].gt_masks.tensor)
    assert torch.equal(a["instances"].gt_boxes.tensor, b["instances"].gt_boxes.tensor)
    assert torch.equal(a["instances"].gt_classes, b["instances"].gt_classes)


def test_caching_readers_give_the_same_outputs(
    crowded: list[dict[str, Any]], tmp_path: Path
) -> None:
    readers = [ScanCache(tmp_path / "cache"), SliceLRU(2**20)]
    augmentations = [T.RandomFlip(prob=0.5), RandomAffine(10.0, 0.05, prob=0.5)]
    for reader in readers:
        for seed, record in enumerate(crowded * 2):
            np.random.seed(seed)
            expected = _mapper(augmentations)(record)
            np.random.seed(seed)
            mapper = UWMDatasetMapper(
                True, augmentations=augmentations, slice_offsets=OFFSETS, reader=reader
            )
            _outputs_equal(mapper(record), expected)


def test_readers_from_the_config(tmp_path: Path) -> None:
    cfg = build_cfg(INSTANT_CONFIG, ["OUTPUT_DIR", str(tmp_path / "run")])
    train = UWMDatasetMapper(cfg, is_train=True).reader
    assert isinstance(train, ScanCache)
    assert train.cache_dir == tmp_path / "run" / "coco" / "scan_cache"  # beside the COCO files
    other = build_cfg(INSTANT_CONFIG, ["UWM.SCAN_CACHE_DIR", str(tmp_path / "elsewhere")])
    assert UWMDatasetMapper(other, is_train=True).reader.cache_dir == tmp_path / "elsewhere"
    test = UWMDatasetMapper(cfg, is_train=False).reader  # inference writes no copy of the data
    assert isinstance(test, SliceLRU) and test.max_bytes == 32 * 2**20
    plain = build_cfg(INSTANT_CONFIG, ["UWM.SCAN_CACHE", "False", "UWM.SCAN_LRU_MB", "0"])
    assert UWMDatasetMapper(plain, is_train=True).reader is read_scan
    assert UWMDatasetMapper(plain, is_train=False).reader is read_scan
    with pytest.raises(UWMInputError, match=r"UWM\.SCAN_LRU_MB"):
        build_cfg(INSTANT_CONFIG, ["UWM.SCAN_LRU_MB", "-1"])


def test_test_mapper_decodes_each_png_once_per_case_day(crowded: list[dict[str, Any]]) -> None:
    calls: list[Path] = []

    def counting(path: Path) -> np.ndarray:
        calls.append(Path(path))
        return read_scan(path)

    cfg = build_cfg(INSTANT_CONFIG, ["INPUT.MIN_SIZE_TEST", "0"])
    mapper = UWMDatasetMapper(cfg, is_train=False)
    mapper.reader.reader = counting  # the config's SliceLRU, counting its decodes
    for record in crowded:  # slice order, as the predictor reads a case-day
        out = mapper(record)
        expected = build_model_input(record["neighbor_files"]).transpose(2, 0, 1)
        np.testing.assert_array_equal(out["image"].numpy(), expected)
    assert sorted(calls) == sorted(Path(r["file_name"]) for r in crowded)  # 5 decodes, not 15


def test_data_loader_workers_give_the_in_process_outputs(
    crowded: list[dict[str, Any]], scans: list[dict[str, Any]], tmp_path: Path
) -> None:
    """Workers allocate their outputs in shared memory and read through one shared disk cache."""
    from detectron2.data.common import DatasetFromList, MapDataset

    records = crowded + scans
    cache = ScanCache(tmp_path / "cache")
    mapper = UWMDatasetMapper(
        True, augmentations=[ResizeShortestEdgeCV2(300, 1000)], slice_offsets=OFFSETS, reader=cache
    )
    loader = torch.utils.data.DataLoader(
        MapDataset(DatasetFromList(records, copy=False), mapper),
        batch_size=1,
        num_workers=2,
        collate_fn=lambda batch: batch[0],
        multiprocessing_context="fork",
    )
    outputs = list(loader)
    assert len(outputs) == len(records)
    for record, out in zip(records, outputs, strict=True):
        expected = _mapper([ResizeShortestEdgeCV2(300, 1000)])(record)
        assert out["slice_id"] == record["slice_id"]
        _outputs_equal(out, expected)
    assert len(list((tmp_path / "cache").iterdir())) == 2  # one file per case-day
