"""``UWMDatasetMapper``: dataset dict → model input, for 16-bit 2.5D MRI slices.

Like detectron2's ``DatasetMapper`` (same ``from_config`` / ``configurable`` shape, same output
keys), with three differences that this data needs:

* the image is built by :func:`uwm_d2.data.inputs.build_model_input` from the record's
  ``neighbor_files`` (16-bit PNGs read with OpenCV, never through PIL's 8-bit path; one percentile
  window per stack; float ``[0, 255]``), not by ``detection_utils.read_image``;
* augmentations (:func:`build_augmentations`) are photometric changes on the float image,
  horizontal flip, one rotation + shift warp and ``ResizeShortestEdge`` scale jitter; the masks
  (COCO RLE, decoded to bitmasks) go through the same geometric transforms, and boxes are
  recomputed from the transformed masks (a rotated box would be loose);
* empty slices stay: they come out with an empty ``Instances`` (zero boxes, zero bitmasks), which
  the ROI heads train on as pure background;
* the same transformed masks also give ``sem_seg``, a ``(C, H, W)`` uint8 map per class (1 where
  any instance of the class is; classes may overlap), the target of the multi-label semantic head
  (:mod:`uwm_d2.modeling.semantic`), so both model kinds learn from exactly the same labels.

``height``/``width`` of the output are the scan's own (e.g. 310/360 for a 360x310 scan), so the
model rescales its predictions to the original scan, whatever the training resize was.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from detectron2.config import CfgNode, configurable
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.structures import BitMasks, Instances
from pycocotools import mask as mask_util

from uwm_d2.core.errors import UWMInputError
from uwm_d2.core.ids import CLASSES
from uwm_d2.core.io import DEFAULT_SLICE_OFFSETS, read_scan
from uwm_d2.data.inputs import build_model_input
from uwm_d2.data.transforms import RandomAffine, RandomPhotometric, ResizeShortestEdgeCV2

logger = logging.getLogger(__name__)


def build_augmentations(cfg: CfgNode, is_train: bool) -> list[T.Augmentation]:
    """The augmentations of ``cfg``, in the order they are applied.

    Training: photometric (``UWM.AUG.BRIGHTNESS/CONTRAST/GAMMA``), horizontal flip
    (``UWM.AUG.HFLIP_PROB``), rotation + shift (``UWM.AUG.ROTATION_DEG/SHIFT_FRACTION``), then
    ``ResizeShortestEdge`` (with OpenCV) over ``INPUT.MIN_SIZE_TRAIN`` (the scale jitter). The warps
    run before the resize, on the smaller native scan. Test: only the resize to
    ``INPUT.MIN_SIZE_TEST`` (none when it is 0).
    """
    if not is_train:
        if cfg.INPUT.MIN_SIZE_TEST == 0:
            return []
        return [ResizeShortestEdgeCV2(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST, "choice")]
    aug = cfg.UWM.AUG
    augmentations: list[T.Augmentation] = [
        RandomPhotometric(aug.BRIGHTNESS, aug.CONTRAST, aug.GAMMA, prob=aug.PHOTOMETRIC_PROB),
    ]
    if aug.HFLIP_PROB > 0:
        augmentations.append(T.RandomFlip(prob=aug.HFLIP_PROB, horizontal=True, vertical=False))
    augmentations.append(RandomAffine(aug.ROTATION_DEG, aug.SHIFT_FRACTION, prob=aug.AFFINE_PROB))
    augmentations.append(
        ResizeShortestEdgeCV2(
            cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN, cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING
        )
    )
    return augmentations


class UWMDatasetMapper:
    """Map one dataset dict of :mod:`uwm_d2.data.register` to the model's input format.

    Output: the input dict's fields (``file_name``, ``image_id``, ``slice_id``, ``case_day``,
    ``height``, ``width``, ...) plus ``image``, a ``(C, H', W')`` ``float32`` tensor in
    ``[0, 255]`` (one channel per slice offset), and, when annotations are kept, ``instances``
    with ``gt_boxes``, ``gt_classes`` and ``gt_masks`` (``BitMasks``) and ``sem_seg``, the
    ``(C, H', W')`` uint8 per-class union of those masks. ``annotations`` is removed.
    """

    @configurable
    def __init__(
        self,
        is_train: bool,
        *,
        augmentations: Sequence[T.Augmentation | T.Transform],
        slice_offsets: Sequence[int] = DEFAULT_SLICE_OFFSETS,
        low_percentile: float = 0.5,
        high_percentile: float = 99.5,
        keep_annotations: bool | None = None,
        reader: Callable[[Path], np.ndarray] = read_scan,
    ) -> None:
        """
        Args:
            is_train: training mode (annotations kept by default).
            augmentations: applied in order to the image and, geometrically, the masks.
            slice_offsets: the 2.5D channels; each record's ``neighbor_files`` must match.
            low_percentile, high_percentile: the intensity window.
            keep_annotations: turn annotations into ``instances``; defaults to ``is_train``
                (the validation loss keeps them in test mode).
            reader: reads one scan (tests may substitute one).
        """
        self.is_train = is_train
        self.augmentations = T.AugmentationList(list(augmentations))
        self.slice_offsets = tuple(int(offset) for offset in slice_offsets)
        self.low_percentile = float(low_percentile)
        self.high_percentile = float(high_percentile)
        self.keep_annotations = is_train if keep_annotations is None else bool(keep_annotations)
        self.reader = reader
        mode = "training" if is_train else "inference"
        logger.info(f"[UWMDatasetMapper] augmentations used in {mode}: {self.augmentations}")

    @classmethod
    def from_config(
        cls, cfg: CfgNode, is_train: bool = True, keep_annotations: bool | None = None
    ) -> dict[str, Any]:
        return {
            "is_train": is_train,
            "augmentations": build_augmentations(cfg, is_train),
            "slice_offsets": cfg.UWM.SLICE_OFFSETS,
            "low_percentile": cfg.UWM.INTENSITY_LOW_PERCENTILE,
            "high_percentile": cfg.UWM.INTENSITY_HIGH_PERCENTILE,
            "keep_annotations": keep_annotations,
        }

    def __call__(self, dataset_dict: dict[str, Any]) -> dict[str, Any]:
        dataset_dict = copy.deepcopy(dataset_dict)  # the mapper must not change the dataset
        files = dataset_dict.get("neighbor_files")
        if files is None or len(files) != len(self.slice_offsets):
            raise UWMInputError(
                f"dataset dict of {dataset_dict.get('file_name')!r} has neighbor_files {files!r}, "
                f"expected {len(self.slice_offsets)} (UWM.SLICE_OFFSETS {self.slice_offsets}); "
                "register the datasets with the same offsets"
            )
        image = build_model_input(files, self.low_percentile, self.high_percentile, self.reader)
        utils.check_image_size(dataset_dict, image)

        aug_input = T.AugInput(image)
        transforms = self.augmentations(aug_input)
        image = aug_input.image
        image_shape = image.shape[:2]
        # HWC → CHW; the transforms may leave negative strides (flips), hence the copy.
        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))

        annotations = dataset_dict.pop("annotations", None)
        if not self.keep_annotations:
            return dataset_dict
        instances = self._instances(annotations or [], transforms, image_shape)
        dataset_dict["instances"] = instances
        dataset_dict["sem_seg"] = class_maps(instances, len(CLASSES))
        return dataset_dict

    @staticmethod
    def _instances(
        annotations: list[dict[str, Any]],
        transforms: T.TransformList,
        image_shape: tuple[int, int],
    ) -> Instances:
        """Transformed annotations → ``Instances`` with bitmasks and boxes tight on the masks.

        All RLE masks of the slice are decoded into one ``(H, W, N)`` array and transformed in one
        go (one warp, one resize) rather than one call per instance; boxes come from the
        transformed masks, and a mask moved out of the frame drops its instance.
        """
        annotations = [obj for obj in annotations if obj.get("iscrowd", 0) == 0]
        if any(not isinstance(obj["segmentation"], dict) for obj in annotations):
            # Polygons (not produced by uwm_d2.data.coco): detectron2's own path.
            annos = [
                utils.transform_instance_annotations(obj, transforms, image_shape)
                for obj in annotations
            ]
            instances = utils.annotations_to_instances(annos, image_shape, mask_format="bitmask")
            instances.gt_boxes = instances.gt_masks.get_bounding_boxes()
            return utils.filter_empty_instances(instances)
        height, width = image_shape
        if annotations:
            stacked = mask_util.decode([obj["segmentation"] for obj in annotations])  # (H, W, N)
            stacked = transforms.apply_segmentation(np.ascontiguousarray(stacked))
            stacked = stacked.reshape(height, width, -1)  # OpenCV drops a last axis of size 1
            classes = np.array([obj["category_id"] for obj in annotations], dtype=np.int64)
            # One transposing copy to (N, H, W); decoded RLE and nearest-neighbour transforms
            # keep the values 0/1, so the uint8 memory can be viewed as bool without a pass.
            masks = np.ascontiguousarray(np.moveaxis(stacked, 2, 0)).view(bool)
            keep = masks.reshape(len(masks), -1).any(axis=1)  # contiguous rows: fast
            if not keep.all():
                masks, classes = masks[keep], classes[keep]
        else:
            masks = np.zeros((0, height, width), dtype=bool)
            classes = np.zeros((0,), dtype=np.int64)
        instances = Instances(image_shape)
        instances.gt_masks = BitMasks(torch.from_numpy(masks))
        instances.gt_boxes = instances.gt_masks.get_bounding_boxes()
        instances.gt_classes = torch.from_numpy(classes)
        return instances


def class_maps(instances: Instances, num_classes: int) -> torch.Tensor:
    """``(num_classes, H, W)`` uint8: per class, the union of its instances' ``gt_masks``."""
    height, width = instances.image_size
    maps = torch.zeros((num_classes, height, width), dtype=torch.uint8)
    if len(instances):
        masks = instances.gt_masks.tensor
        for class_index in instances.gt_classes.unique().tolist():
            maps[class_index] = masks[instances.gt_classes == class_index].any(dim=0)
    return maps
