"""Register the COCO files of ``uwm_d2.data.coco`` in detectron2's DatasetCatalog / MetadataCatalog.

Names (``UWM.COCO_DIR`` holds the files, built from ``UWM.DATA_ROOT`` by :func:`ensure_coco_files`
when missing):

* ``uwm_train_fold{k}`` / ``uwm_val_fold{k}``: ``train_fold{k}.json`` / ``val_fold{k}.json``, for
  every fold found in the folder;
* ``uwm_train`` / ``uwm_val``: the same for the fold ``UWM.FOLD`` (the configs train on these, so
  one key switches folds);
* ``uwm_all``: ``all.json``, every training slice.

Loading is lazy (detectron2 calls the loader when a dataset is first used) and yields standard
detectron2 dataset dicts: ``file_name`` resolved against the data root, ``height``/``width``,
``image_id`` (the COCO id), annotations with ``bbox_mode`` ``XYWH_ABS``, the COCO RLE
``segmentation`` as it is and ``category_id`` in ``0..2``; empty slices stay, with
``annotations == []``. Each dict also carries ``slice_id``, ``case_day``, ``case``, ``day``,
``slice``, ``spacing`` (``(z, y, x)`` mm) and ``neighbor_files``: the 2.5D channel files taken
from its own case-day (see :mod:`uwm_d2.data.inputs`).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

from uwm_d2.core.errors import UWMInputError
from uwm_d2.core.ids import CLASSES, SLICE_THICKNESS_MM
from uwm_d2.core.io import DEFAULT_SLICE_OFFSETS
from uwm_d2.core.layout_reader import BAD_CASE_DAYS, check_data_root
from uwm_d2.data.inputs import attach_neighbor_files

logger = logging.getLogger(__name__)

#: detectron2 ``evaluator_type`` of every dataset registered here.
EVALUATOR_TYPE = "uwm"


def load_uwm_json(
    json_file: str | os.PathLike,
    data_root: str | os.PathLike,
    slice_offsets: Sequence[int] = DEFAULT_SLICE_OFFSETS,
    exclude_bad: bool = True,
) -> list[dict[str, Any]]:
    """Load one COCO file of :mod:`uwm_d2.data.coco` as detectron2 dataset dicts.

    Args:
        json_file: ``all.json``, ``train_fold{k}.json`` or ``val_fold{k}.json``.
        data_root: the competition root that the images' ``file_name`` are relative to.
        slice_offsets: the 2.5D channels; sets each record's ``neighbor_files``.
        exclude_bad: drop the case-days of :data:`uwm_d2.core.layout_reader.BAD_CASE_DAYS`.

    Returns:
        One dict per slice, sorted by case-day then slice number.

    Raises:
        UWMInputError: the file is missing or not valid JSON, or an annotation names an unknown
            category.
    """
    json_file = Path(json_file)
    try:
        coco = json.loads(json_file.read_text())
    except FileNotFoundError as error:
        raise UWMInputError(f"COCO file {str(json_file)!r} does not exist") from error
    except (OSError, ValueError) as error:
        raise UWMInputError(f"COCO file {str(json_file)!r} cannot be read: {error}") from error
    category_to_index = {index + 1: index for index in range(len(CLASSES))}
    annotations: dict[int, list[dict[str, Any]]] = {}
    for ann in coco["annotations"]:
        if ann["category_id"] not in category_to_index:
            raise UWMInputError(
                f"COCO file {str(json_file)!r}: annotation {ann['id']} has unknown category "
                f"{ann['category_id']} (expected 1..{len(CLASSES)})"
            )
        annotations.setdefault(ann["image_id"], []).append(
            {
                "bbox": ann["bbox"],
                "bbox_mode": BoxMode.XYWH_ABS,
                "segmentation": ann["segmentation"],
                "category_id": category_to_index[ann["category_id"]],
                "iscrowd": ann.get("iscrowd", 0),
            }
        )
    root = Path(data_root)
    records = []
    dropped = set()
    for image in coco["images"]:
        if exclude_bad and image["case_day"] in BAD_CASE_DAYS:
            dropped.add(image["case_day"])
            continue
        records.append(
            {
                "file_name": str(root / image["file_name"]),
                "height": image["height"],
                "width": image["width"],
                "image_id": image["id"],
                "slice_id": image["slice_id"],
                "case_day": image["case_day"],
                "case": image["case"],
                "day": image["day"],
                "slice": image["slice"],
                "spacing": (SLICE_THICKNESS_MM, image["spacing_y"], image["spacing_x"]),
                "annotations": annotations.get(image["id"], []),
            }
        )
    if dropped:
        logger.info(f"{json_file.name}: left out {len(dropped)} case-day(s) with known bad labels")
    attach_neighbor_files(records, slice_offsets)
    records.sort(key=lambda record: (record["case"], record["day"], record["slice"]))
    return records


def has_coco_files(coco_dir: str | os.PathLike) -> bool:
    """Whether ``coco_dir`` holds a finished COCO build (its ``manifest.json``, written last)."""
    from uwm_d2.data.coco import MANIFEST

    return (Path(coco_dir) / MANIFEST).is_file()


def ensure_coco_files(
    coco_dir: str | os.PathLike, data_root: str | os.PathLike, num_folds: int = 5
) -> Path:
    """Build the COCO files from ``data_root`` into ``coco_dir`` unless they are there already.

    The files keep every case-day (``EXCLUDE_BAD`` is applied when loading), so one build serves
    either setting.

    Raises:
        UWMInputError: no COCO files and ``data_root`` is unset or not a competition root.
    """
    coco_dir = Path(coco_dir)
    if has_coco_files(coco_dir):
        return coco_dir
    if not str(data_root):
        raise UWMInputError(f"{str(coco_dir)!r} holds no COCO files and UWM.DATA_ROOT is not set")
    from uwm_d2.data.coco import build_coco, write_coco

    logger.info(f"building COCO files from {str(data_root)!r} into {str(coco_dir)!r}")
    # Build (and so validate) everything in memory before creating any folder: bad data must
    # not leave an empty new OUTPUT_DIR (the default COCO_DIR lies inside it) behind.
    build = build_coco(data_root, num_folds=num_folds, exclude_bad=False)
    write_coco(build, coco_dir)
    for line in build.summary_lines():
        logger.info(line)
    return coco_dir


def fold_numbers(coco_dir: str | os.PathLike) -> list[int]:
    """The folds of the build in ``coco_dir``, as its manifest lists them (never a glob).

    Raises:
        UWMInputError: the folder has no manifest (not built by ``tools/make_coco.py``, or the
            build was interrupted), or a file the manifest lists is missing or has another size
            (changed since the build).
    """
    from uwm_d2.data.coco import MANIFEST

    coco_dir = Path(coco_dir)
    rebuild = "rebuild it with tools/make_coco.py"
    try:
        manifest = json.loads((coco_dir / MANIFEST).read_text())
        num_folds, files = int(manifest["num_folds"]), dict(manifest["files"])
    except FileNotFoundError:
        raise UWMInputError(
            f"COCO folder {str(coco_dir)!r} has no {MANIFEST} (not a finished build); {rebuild}"
        ) from None
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise UWMInputError(
            f"COCO folder {str(coco_dir)!r}: unreadable {MANIFEST} ({error}); {rebuild}"
        ) from None
    for name, size in files.items():
        path = coco_dir / name
        if not path.is_file() or path.stat().st_size != size:
            what = "is missing" if not path.is_file() else "changed since the build"
            raise UWMInputError(f"COCO file {str(path)!r} {what}; {rebuild}")
    return list(range(num_folds))


def _register(
    name: str,
    json_file: Path,
    data_root: Path,
    slice_offsets: tuple[int, ...],
    exclude_bad: bool,
) -> None:
    """(Re-)register one dataset: re-registering replaces the loader and the metadata."""
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
    if name in MetadataCatalog.list():
        MetadataCatalog.remove(name)

    def load() -> list[dict[str, Any]]:
        return load_uwm_json(json_file, data_root, slice_offsets, exclude_bad)

    DatasetCatalog.register(name, load)
    MetadataCatalog.get(name).set(
        thing_classes=list(CLASSES),
        thing_dataset_id_to_contiguous_id={index + 1: index for index in range(len(CLASSES))},
        json_file=str(json_file),
        image_root=str(data_root),
        data_root=str(data_root),
        evaluator_type=EVALUATOR_TYPE,
        slice_offsets=slice_offsets,
        slice_thickness_mm=SLICE_THICKNESS_MM,
        exclude_bad=exclude_bad,
    )


def register_uwm_datasets(
    coco_dir: str | os.PathLike,
    data_root: str | os.PathLike,
    num_folds: int = 5,
    *,
    fold: int = 0,
    slice_offsets: Sequence[int] = DEFAULT_SLICE_OFFSETS,
    exclude_bad: bool = True,
) -> list[str]:
    """Register ``uwm_train_fold{k}``, ``uwm_val_fold{k}``, ``uwm_train``, ``uwm_val``, ``uwm_all``.

    Idempotent: calling it again (e.g. with other offsets) replaces the earlier registrations.

    Args:
        coco_dir: folder of the COCO files; built from ``data_root`` first if it holds none.
        data_root: the competition root the files' ``file_name`` are relative to.
        num_folds: folds to build when ``coco_dir`` holds no COCO files; the folds registered
            are those found on disk.
        fold: the fold that ``uwm_train`` / ``uwm_val`` stand for.
        slice_offsets: the 2.5D channels (``UWM.SLICE_OFFSETS``).
        exclude_bad: drop the case-days with known bad labels when loading.

    Returns:
        The registered names.

    Raises:
        UWMInputError: ``data_root`` is not a folder, or ``fold`` has no files in ``coco_dir``.
    """
    coco_dir = Path(coco_dir)
    data_root = check_data_root(data_root, "UWM.DATA_ROOT")
    ensure_coco_files(coco_dir, data_root, num_folds)
    folds = fold_numbers(coco_dir)
    if fold not in folds:
        raise UWMInputError(
            f"UWM.FOLD {fold} has no train_fold{fold}.json / val_fold{fold}.json in "
            f"{str(coco_dir)!r} (folds there: {folds or 'none'})"
        )
    offsets = tuple(int(offset) for offset in slice_offsets)
    names = []
    for name, file_name in [
        *[(f"uwm_train_fold{k}", f"train_fold{k}.json") for k in folds],
        *[(f"uwm_val_fold{k}", f"val_fold{k}.json") for k in folds],
        ("uwm_train", f"train_fold{fold}.json"),
        ("uwm_val", f"val_fold{fold}.json"),
        ("uwm_all", "all.json"),
    ]:
        _register(name, coco_dir / file_name, data_root, offsets, exclude_bad)
        names.append(name)
    return names


def register_from_cfg(cfg: CfgNode) -> list[str]:
    """:func:`register_uwm_datasets` with the ``UWM`` keys, then check ``DATASETS`` can be found.

    Raises:
        UWMInputError: ``UWM.DATA_ROOT`` is unset, or a name in ``DATASETS.TRAIN`` /
            ``DATASETS.TEST`` is not registered.
    """
    from uwm_d2.config import coco_dir_of

    check_data_root(cfg.UWM.DATA_ROOT, "UWM.DATA_ROOT")
    names = register_uwm_datasets(
        coco_dir_of(cfg),
        cfg.UWM.DATA_ROOT,
        cfg.UWM.NUM_FOLDS,
        fold=cfg.UWM.FOLD,
        slice_offsets=cfg.UWM.SLICE_OFFSETS,
        exclude_bad=cfg.UWM.EXCLUDE_BAD,
    )
    available = DatasetCatalog.list()
    for key in ("TRAIN", "TEST"):
        for name in cfg.DATASETS[key]:
            if name not in available:
                raise UWMInputError(
                    f"DATASETS.{key} names {name!r}, which is not registered "
                    f"(uwm_d2 registers: {', '.join(names)})"
                )
    return names
