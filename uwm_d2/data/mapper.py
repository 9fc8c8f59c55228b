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

Speed (``benchmarks/bench_mapper.py``; a sample decodes three PNGs and carries 15-30 instances):

* scans come through a caching reader built from the config (:func:`build_scan_reader`): the
  training mapper reads a pre-decoded, memory-mapped copy of each case-day
  (:class:`~uwm_d2.data.cache.ScanCache`, ``UWM.SCAN_CACHE``), the test mapper a small per-process
  LRU (:class:`~uwm_d2.data.cache.SliceLRU`, ``UWM.SCAN_LRU_MB``) that makes each PNG decoded once
  when a case-day is read in slice order; both check every PNG's stamp, so nothing is served stale;
* masks travel as packed bits (:mod:`uwm_d2.data.packed_masks`): the RLEs are decoded straight into
  ``ceil(N / 8)`` planes, the geometric transforms move those planes, and boxes, emptiness and
  ``sem_seg`` come from the planes; only the final ``gt_masks`` are unpacked, one pass each;
* all output tensors of a sample are views of one storage, in shared memory from the start
  inside a data-loader worker (:func:`_carve`): the worker hands a sample to the main process as
  one shared-memory segment, without the copy into shared memory torch makes of other tensors
  and with one file-descriptor hand-over instead of five.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from detectron2.config import CfgNode, configurable
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.structures import BitMasks, Boxes, Instances

from uwm_d2.core.errors import UWMInputError
from uwm_d2.core.ids import CLASSES
from uwm_d2.core.io import DEFAULT_SLICE_OFFSETS, read_scan
from uwm_d2.data import packed_masks
from uwm_d2.data.cache import ScanCache, SliceLRU
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


def build_scan_reader(cfg: CfgNode, is_train: bool) -> Callable[[Path], np.ndarray]:
    """The scan reader of a mapper built from ``cfg``.

    Training with ``UWM.SCAN_CACHE``: a :class:`~uwm_d2.data.cache.ScanCache` in
    ``UWM.SCAN_CACHE_DIR`` (default ``<COCO_DIR>/scan_cache``, beside the COCO files it serves).
    Otherwise (test mode: validation and inference read case-days in slice order, and inference
    must not write a copy of the test set): a :class:`~uwm_d2.data.cache.SliceLRU` of
    ``UWM.SCAN_LRU_MB`` per process, or plain ``read_scan`` when that is 0.
    """
    if is_train and cfg.UWM.SCAN_CACHE:
        from uwm_d2.config import coco_dir_of  # uwm_d2.config imports the models: import late

        return ScanCache(cfg.UWM.SCAN_CACHE_DIR or coco_dir_of(cfg) / "scan_cache")
    if cfg.UWM.SCAN_LRU_MB > 0:
        return SliceLRU(int(cfg.UWM.SCAN_LRU_MB * 2**20))
    return read_scan


def _carve(specs: Sequence[tuple[Sequence[int], torch.dtype]]) -> list[torch.Tensor]:
    """Uninitialized tensors of these ``(shape, dtype)``, all views of ONE storage.

    Why one storage: a data-loader worker hands every tensor of a sample to the main process
    through shared memory, and torch passes each *storage* as a file descriptor, one socket
    round trip with an authentication handshake (and a wake-up of the worker's sharer thread)
    apiece. One storage per sample makes that one hand-over instead of five; measured with
    canned samples on 2 loaded cores: 141 vs 110 samples/s.

    Inside a worker the storage is allocated in shared memory from the start, as torch's own
    ``default_collate`` does for batches: torch would otherwise copy it into a fresh segment
    before sending it (a second buffer, its page faults, ~0.7 ms per 3 MB sample). Outside
    workers, plain memory. The views keep the whole storage alive as long as any one is held.
    """
    offsets, total = [], 0
    for shape, dtype in specs:
        total = -(-total // 8) * 8  # every view starts 8-byte aligned (int64, float32)
        offsets.append(total)
        total += math.prod(shape) * dtype.itemsize
    storage = None
    if torch.utils.data.get_worker_info() is not None:
        try:
            storage = torch.UntypedStorage._new_shared(max(total, 1))
        except (AttributeError, RuntimeError):  # a torch without this (private) constructor
            storage = None
    if storage is None:
        storage = torch.UntypedStorage(max(total, 1))
    return [
        torch.empty((0,), dtype=dtype).set_(storage, offset // dtype.itemsize, tuple(shape))
        for (shape, dtype), offset in zip(specs, offsets, strict=True)
    ]


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
            reader: reads one scan (``read_scan`` or a caching reader of
                :mod:`uwm_d2.data.cache`; from a config, :func:`build_scan_reader`).
        """
        self.is_train = is_train
        self.augmentations = T.AugmentationList(list(augmentations))
        self.slice_offsets = tuple(int(offset) for offset in slice_offsets)
        self.low_percentile = float(low_percentile)
        self.high_percentile = float(high_percentile)
        self.keep_annotations = is_train if keep_annotations is None else bool(keep_annotations)
        self.reader = reader
        mode = "training" if is_train else "inference"
        logger.debug(f"[UWMDatasetMapper] augmentations used in {mode}: {self.augmentations}")

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
            "reader": build_scan_reader(cfg, is_train),
        }

    def __call__(self, dataset_dict: dict[str, Any]) -> dict[str, Any]:
        # The mapper must not change the dataset: copy the record, except its annotations, which
        # are only read (deep-copying their RLE strings was ~3% of a sample's time).
        annotations = dataset_dict.get("annotations")
        dataset_dict = copy.deepcopy({k: v for k, v in dataset_dict.items() if k != "annotations"})
        files = dataset_dict.get("neighbor_files")
        if files is None or len(files) != len(self.slice_offsets):
            raise UWMInputError(
                f"dataset dict of {dataset_dict.get('file_name')!r} has neighbor_files {files!r}, "
                f"expected {len(self.slice_offsets)} (UWM.SLICE_OFFSETS {self.slice_offsets}); "
                "register the datasets with the same offsets"
            )
        image = build_model_input(files, self.low_percentile, self.high_percentile, self.reader)
        utils.check_image_size(dataset_dict, image)
        input_shape = image.shape[:2]

        aug_input = T.AugInput(image)
        transforms = self.augmentations(aug_input)
        image = aug_input.image
        image_shape = image.shape[:2]
        if image.dtype != np.float32:  # a custom augmentation changed the dtype: plain path
            image = image.astype(np.float32)

        annotations = [obj for obj in annotations or [] if obj.get("iscrowd", 0) == 0]
        rle = self.keep_annotations and not any(
            not isinstance(obj["segmentation"], dict) for obj in annotations
        )
        targets = (
            self._rle_targets(
                annotations, transforms, input_shape, image_shape, dataset_dict.get("file_name")
            )
            if rle
            else None
        )
        # Every output tensor is carved from one storage (see _carve), filled in place.
        height, width = image_shape
        specs: list[tuple[tuple[int, ...], torch.dtype]] = [
            ((image.shape[2], height, width), torch.float32)
        ]
        if targets is not None:
            count = len(targets.keep)
            specs += [
                ((count, height, width), torch.bool),
                ((len(CLASSES), height, width), torch.uint8),
                ((count, 4), torch.float32),
                ((count,), torch.int64),
            ]
        tensors = _carve(specs)
        # HWC → CHW in one copy, which also undoes a flip's negative strides.
        np.copyto(tensors[0].numpy(), image.transpose(2, 0, 1))
        dataset_dict["image"] = tensors[0]
        if not self.keep_annotations:
            return dataset_dict
        if targets is None:
            instances = self._polygon_instances(annotations, transforms, image_shape)
            sem_seg = class_maps(instances, len(CLASSES))
        else:
            instances, sem_seg = targets.fill(image_shape, *tensors[1:])
        dataset_dict["instances"] = instances
        dataset_dict["sem_seg"] = sem_seg
        return dataset_dict

    @staticmethod
    def _polygon_instances(
        annotations: list[dict[str, Any]], transforms: T.TransformList, image_shape: tuple[int, int]
    ) -> Instances:
        """Polygons (not produced by :mod:`uwm_d2.data.coco`): detectron2's own path."""
        annos = [
            utils.transform_instance_annotations(obj, transforms, image_shape)
            for obj in annotations
        ]
        instances = utils.annotations_to_instances(annos, image_shape, mask_format="bitmask")
        instances.gt_boxes = instances.gt_masks.get_bounding_boxes()
        return utils.filter_empty_instances(instances)

    @staticmethod
    def _rle_targets(
        annotations: list[dict[str, Any]],
        transforms: T.TransformList,
        input_shape: tuple[int, int],
        image_shape: tuple[int, int],
        file_name: str | None,
    ) -> _PackedTargets:
        """COCO RLE annotations → the transformed packed masks, tight boxes and classes.

        The masks are decoded into packed planes (8 instances per ``uint8`` plane, see
        :mod:`uwm_d2.data.packed_masks`), the planes go through the geometric transforms, and
        boxes and emptiness are read off the planes. A mask moved out of the frame drops its
        instance.
        """
        height, width = image_shape
        if not annotations:
            empty = np.zeros((0, height, width), dtype=np.uint8)
            return _PackedTargets(empty, np.zeros((0,), np.int64), np.zeros((0, 4), np.float32), [])
        try:
            planes = packed_masks.decode_packed(
                [obj["segmentation"] for obj in annotations], *input_shape
            )
        except ValueError as error:
            raise UWMInputError(f"annotation of {file_name!r}: {error}") from None
        moved = np.empty((len(planes), height, width), dtype=np.uint8)
        for index, plane in enumerate(planes):
            moved[index] = transforms.apply_segmentation(plane)
        boxes, nonempty = packed_masks.bounding_boxes(moved, len(annotations))
        keep = np.flatnonzero(nonempty)
        classes = [obj["category_id"] for obj in annotations]
        return _PackedTargets(moved, keep, boxes[keep], [classes[i] for i in keep])


@dataclass
class _PackedTargets:
    """The kept instances of one sample as transformed packed planes, boxes and classes."""

    planes: np.ndarray  # (ceil(N / 8), H, W) uint8, all N instances
    keep: np.ndarray  # indices of the non-empty instances
    boxes: np.ndarray  # (len(keep), 4) float32 XYXY
    classes: list[int]  # len(keep)

    def fill(
        self,
        image_shape: tuple[int, int],
        masks: torch.Tensor,
        sem_seg: torch.Tensor,
        boxes: torch.Tensor,
        classes: torch.Tensor,
    ) -> tuple[Instances, torch.Tensor]:
        """Write the targets into the (uninitialized) output tensors: ``Instances``, ``sem_seg``."""
        classes_np = classes.numpy()
        classes_np[:] = self.classes
        boxes.numpy()[:] = self.boxes
        # Only each instance's box is unpacked (the rest is zero-filled): masks are small.
        packed_masks.unpack(self.planes, self.keep, masks.numpy().view(np.uint8), self.boxes)
        sem_seg.zero_()
        for class_index in np.unique(classes_np).tolist():
            mine = classes_np == class_index
            packed_masks.union(
                self.planes, self.keep[mine], sem_seg[class_index].numpy(), self.boxes[mine]
            )
        instances = Instances(image_shape)
        instances.gt_masks = BitMasks(masks)
        instances.gt_boxes = Boxes(boxes)
        instances.gt_classes = classes
        return instances, sem_seg


def class_maps(instances: Instances, num_classes: int) -> torch.Tensor:
    """``(num_classes, H, W)`` uint8: per class, the union of its instances' ``gt_masks``."""
    height, width = instances.image_size
    maps = torch.zeros((num_classes, height, width), dtype=torch.uint8)
    if len(instances):
        masks = instances.gt_masks.tensor
        for class_index in instances.gt_classes.unique().tolist():
            maps[class_index] = masks[instances.gt_classes == class_index].any(dim=0)
    return maps
