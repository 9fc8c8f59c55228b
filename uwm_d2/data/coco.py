"""Build COCO instance-segmentation JSON files from a competition data root (no torch needed).

Every training slice becomes exactly one COCO image (per file it belongs to), *including* slices
with no organ: a model that never sees an empty slice predicts organs everywhere. Each 8-connected
component of each class mask becomes one annotation whose ``segmentation`` is COCO compressed RLE
(``pycocotools.mask.encode``, column-major), so the holes of ring-shaped bowel survive exactly;
holes are never filled and inner contours never become instances. The competition RLE of
``train.csv`` (row-major, 1-based) is decoded first and never copied into COCO ``counts``.

Outputs (all written atomically, and only after everything was built and validated, so a failure
leaves no partial output): ``all.json`` and, for every fold ``k``, ``train_fold{k}.json`` and
``val_fold{k}.json``, with folds grouped by case (:func:`uwm_d2.data.folds.assign_folds`). Image
and annotation ids are the same in every file. ``manifest.json``, written last, says which files
make up this build (with their sizes): a folder describes exactly one build. Fold files of an
earlier build with more folds are deleted, and registration (:mod:`uwm_d2.data.register`) reads
the manifest, never a glob, so a stale ``train_fold4.json`` can never be trained on silently.

Reading every PNG (to check it exists, decodes and has the size its name promises) is the cost, so
case-days are processed in worker processes (:func:`uwm_d2.core.progress.parallel_map`).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
from pycocotools import mask as mask_util

from uwm_d2.core.atomic import atomic_write_text, check_output_folder, output_folder
from uwm_d2.core.errors import UWMInputError
from uwm_d2.core.ids import CLASSES
from uwm_d2.core.io import read_scan
from uwm_d2.core.layout import (
    BAD_CASE_DAYS,
    check_data_root,
    decode_row,
    index_scans,
    label_table,
    read_label_csv,
)
from uwm_d2.core.progress import Progress, parallel_map
from uwm_d2.data.folds import assign_folds

__all__ = [
    "BAD_CASE_DAYS",
    "CATEGORIES",
    "CocoBuild",
    "build_coco",
    "make_coco",
    "mask_annotations",
    "write_coco",
]

#: COCO categories: ids 1..3 in the order of :data:`uwm_d2.core.ids.CLASSES`.
CATEGORIES: list[dict[str, Any]] = [
    {"id": index + 1, "name": name, "supercategory": "gi_tract"}
    for index, name in enumerate(CLASSES)
]

#: Written last into a COCO folder: the build's settings and ``{file name: size in bytes}``.
MANIFEST = "manifest.json"
#: Fold files of any build (current or stale).
_FOLD_FILE_GLOBS = ("train_fold*.json", "val_fold*.json")

#: With ``workers=None``, one worker process per this many slices (up to the CPU count).
_SLICES_PER_WORKER = 1000

_IMAGE_KEYS = ("case", "day", "slice", "case_day", "spacing_x", "spacing_y")


@dataclass(frozen=True)
class _ImageTask:
    """One slice for a worker: its COCO id, where it is, its size and its three RLE strings."""

    image_id: int
    slice_id: str
    path: str
    height: int
    width: int
    rles: tuple[str, str, str]


@dataclass
class CocoBuild:
    """The validated dataset in memory: ``all`` (a COCO dict) and ``folds`` (``{case: fold}``)."""

    all: dict[str, Any]
    folds: dict[int, int]
    num_folds: int
    #: What writing it replaced in its folder (one line), ``""`` when nothing or the same folds.
    replaced: str = ""

    def split(self, fold: int, which: str) -> dict[str, Any]:
        """The ``"train"`` (every other fold) or ``"val"`` (this fold) part of fold ``fold``."""
        keep_val = which == "val"
        images = [
            image for image in self.all["images"] if (self.folds[image["case"]] == fold) == keep_val
        ]
        kept = {image["id"] for image in images}
        annotations = [ann for ann in self.all["annotations"] if ann["image_id"] in kept]
        info = dict(self.all["info"], fold=fold, split=which)
        return {**self.all, "info": info, "images": images, "annotations": annotations}

    def files(self) -> dict[str, dict[str, Any]]:
        """Every output file name and its content."""
        files = {"all.json": self.all}
        for fold in range(self.num_folds):
            files[f"train_fold{fold}.json"] = self.split(fold, "train")
            files[f"val_fold{fold}.json"] = self.split(fold, "val")
        return files

    def summary_lines(self) -> list[str]:
        """Slices, annotated slices, annotations per class and the folds' sizes."""
        images, annotations = self.all["images"], self.all["annotations"]
        annotated = len({ann["image_id"] for ann in annotations})
        per_class = Counter(ann["category_id"] for ann in annotations)
        fold_slices = Counter(self.folds[image["case"]] for image in images)
        fold_cases = Counter(self.folds.values())
        lines = [
            f"slices: {len(images)} ({annotated} annotated, {len(images) - annotated} empty), "
            f"cases: {len(self.folds)}, case-days: {len({i['case_day'] for i in images})}",
            "annotations: "
            + ", ".join(f"{c['name']} {per_class[c['id']]}" for c in self.all["categories"]),
        ]
        lines += [
            f"fold {fold}: {fold_slices[fold]} val slices, {fold_cases[fold]} "
            + ("case" if fold_cases[fold] == 1 else "cases")
            for fold in range(self.num_folds)
        ]
        return lines


def mask_annotations(mask: np.ndarray, category_id: int) -> list[dict[str, Any]]:
    """One COCO annotation (without ``id`` / ``image_id``) per 8-connected component of ``mask``.

    The ``segmentation`` is compressed COCO RLE of exactly the component's pixels, holes included;
    ``bbox`` is ``[x, y, w, h]`` in pixels and ``area`` the pixel count.
    """
    mask = np.ascontiguousarray(mask, dtype=np.uint8)
    # Grana's (BBDT) labelling: the same components as the default, ~3x faster with stats here.
    count, labels, stats, _ = cv2.connectedComponentsWithStatsWithAlgorithm(
        mask, 8, cv2.CV_32S, cv2.CCL_GRANA
    )
    if count <= 1:
        return []
    # All components in one zeroed (H, W, N) Fortran array, each written only inside its box:
    # one encode call, no full-image comparison per component.
    components = np.zeros((*mask.shape, count - 1), dtype=np.uint8, order="F")
    for label in range(1, count):
        x, y, w, h = stats[label, :4]
        window = labels[y : y + h, x : x + w] == label
        components[y : y + h, x : x + w, label - 1] = window
    encoded = mask_util.encode(components)
    annotations = []
    for label, rle in enumerate(encoded, start=1):
        x, y, w, h, area = (int(v) for v in stats[label])
        annotations.append(
            {
                "category_id": category_id,
                "segmentation": {
                    "size": [int(s) for s in rle["size"]],
                    "counts": rle["counts"].decode("ascii"),
                },
                "bbox": [x, y, w, h],
                "area": area,
                "iscrowd": 0,
            }
        )
    return annotations


@dataclass(frozen=True)
class _CaseDayJob:
    """One case-day's slices for a worker."""

    root: str
    csv_name: str
    tasks: tuple[_ImageTask, ...]


def _process_case_day(job: _CaseDayJob) -> list[tuple[int, list[dict[str, Any]]]]:
    """Check each scan on disk and turn its three masks into annotations (runs in a worker)."""
    cv2.setNumThreads(1)  # parallelism comes from the processes
    results = []
    for task in job.tasks:
        read_scan(Path(job.root) / task.path, (task.height, task.width))
        annotations: list[dict[str, Any]] = []
        for category_id, (name, rle) in enumerate(zip(CLASSES, task.rles, strict=True), start=1):
            if not rle:
                continue  # most rows are empty: skip the decode and the component search
            mask = decode_row(rle, (task.height, task.width), job.csv_name, task.slice_id, name)
            annotations.extend(mask_annotations(mask, category_id))
        results.append((task.image_id, annotations))
    return results


def _image_tables(root: Path, exclude_bad: bool) -> tuple[pd.DataFrame, pd.DataFrame, Path]:
    """The scans of ``train/`` joined with their three RLE strings, validated against each other."""
    csv_path = root / "train.csv"
    labels = read_label_csv(csv_path)
    scans = index_scans(root, "train")
    if exclude_bad:
        scans = scans[~scans["case_day"].isin(BAD_CASE_DAYS)].reset_index(drop=True)
        case_days = labels["id"].str.extract(r"^(case\d+_day\d+)_", expand=False)
        labels = labels[~case_days.isin(BAD_CASE_DAYS)].reset_index(drop=True)
    wide = label_table(labels, "segmentation", csv_path.name, set(scans["id"]), str(root / "train"))
    unlabelled = ~scans["id"].isin(wide.index)
    if unlabelled.any():
        path = scans.loc[unlabelled.idxmax(), "path"]
        raise UWMInputError(f"scan {path!r} has no rows in {csv_path.name}")
    return scans, wide, csv_path


def build_coco(
    data_root: str | os.PathLike,
    num_folds: int = 5,
    seed: int = 0,
    exclude_bad: bool = False,
    workers: int | None = None,
    progress: bool = True,
) -> CocoBuild:
    """Validate ``data_root``'s training data and build the COCO dataset and its folds in memory.

    Args:
        data_root: holds ``train.csv`` and ``train/``.
        num_folds: grouped folds (by case), balanced by slice count.
        seed: fold assignment seed.
        exclude_bad: drop the case-days in :data:`BAD_CASE_DAYS` (known label problems).
        workers: processes reading scans; 1 = this process; ``None`` = one per 1,000 slices, at
            most ``os.cpu_count()`` (starting a worker costs about as much as 500 slices).
        progress: show a tqdm bar on a terminal.

    Raises:
        UWMInputError: naming the culprit: a malformed CSV row, id, class or RLE; a row whose
            scan is missing; a scan without rows; an unreadable PNG or one whose size disagrees with
            its name; fewer cases than folds.
    """
    root = Path(data_root)
    if workers is not None and workers < 1:
        raise UWMInputError(f"workers must be >= 1, got {workers}")
    check_data_root(root)
    scans, wide, csv_path = _image_tables(root, exclude_bad)
    if scans.empty:
        raise UWMInputError(f"no training scans under {str(root / 'train')!r}")
    folds = assign_folds(scans.groupby("case").size().to_dict(), num_folds, seed)

    images: list[dict[str, Any]] = []
    tasks_by_case_day: dict[str, list[_ImageTask]] = {}
    rle_columns = [wide[name] for name in CLASSES]
    for image_id, row in enumerate(scans.itertuples(index=False), start=1):
        images.append(
            {
                "id": image_id,
                "file_name": row.path,
                "width": int(row.width),
                "height": int(row.height),
                "slice_id": row.id,
                **{key: _plain(getattr(row, key)) for key in _IMAGE_KEYS},
            }
        )
        rles = tuple(column[row.id] for column in rle_columns)
        tasks_by_case_day.setdefault(row.case_day, []).append(
            _ImageTask(image_id, row.id, row.path, int(row.height), int(row.width), rles)
        )

    jobs = [
        _CaseDayJob(str(root), csv_path.name, tuple(tasks)) for tasks in tasks_by_case_day.values()
    ]
    if workers is None:
        # A spawned worker costs about a second to start (it imports numpy, OpenCV, pandas), the
        # time to process ~500 slices here: small data sets are faster in this process.
        workers = min(os.cpu_count() or 1, max(1, len(images) // _SLICES_PER_WORKER))
    with Progress(
        len(images), "coco", "slice", enabled=progress, group_unit="case-day", group_total=len(jobs)
    ) as bar:
        chunks = parallel_map(_process_case_day, jobs, workers, bar, lambda job: len(job.tasks))
    results = [result for chunk in chunks for result in chunk]
    annotations = []
    for image_id, image_annotations in sorted(results):
        for annotation in image_annotations:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, **annotation})
    info = {
        "description": "UW-Madison GI tract MRI, built by uwm_d2.data.coco",
        "num_folds": num_folds,
        "fold_seed": seed,
        "exclude_bad": exclude_bad,
    }
    dataset = {
        "info": info,
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": CATEGORIES,
    }
    return CocoBuild(dataset, folds, num_folds)


def _plain(value: Any) -> Any:
    """numpy scalars → Python scalars, for ``json``."""
    return value.item() if isinstance(value, np.generic) else value


def write_coco(build: CocoBuild, out: str | os.PathLike) -> list[Path]:
    """Write every file of ``build`` into ``out`` (created with missing parents), each atomically,
    delete fold files of an earlier build, and write ``manifest.json`` last."""
    contents = {
        name: json.dumps(data, separators=(",", ":")) for name, data in build.files().items()
    }
    written = []
    with output_folder(out) as folder:
        # No manifest while the folder changes: a run killed halfway leaves a folder that says
        # "not built" (uwm_d2.data.register refuses it) rather than a mix of two builds.
        (folder / MANIFEST).unlink(missing_ok=True)
        for name, text in contents.items():
            atomic_write_text(folder / name, text)
            written.append(folder / name)
        stale = {p for pattern in _FOLD_FILE_GLOBS for p in folder.glob(pattern)} - set(written)
        for path in sorted(stale):
            path.unlink()
        manifest = {
            "num_folds": build.num_folds,
            "fold_seed": build.all["info"]["fold_seed"],
            "exclude_bad": build.all["info"]["exclude_bad"],
            # Which case is in which fold: runs record its digest and refuse other splits.
            "folds": {str(case): int(fold) for case, fold in sorted(build.folds.items())},
            "files": {name: len(text.encode()) for name, text in contents.items()},
        }
        atomic_write_text(folder / MANIFEST, json.dumps(manifest, indent=2) + "\n")
        written.append(folder / MANIFEST)
    return written


def make_coco(
    data_root: str | os.PathLike,
    out: str | os.PathLike,
    num_folds: int = 5,
    seed: int = 0,
    exclude_bad: bool = False,
    workers: int | None = None,
    progress: bool = True,
) -> CocoBuild:
    """:func:`build_coco`, then :func:`write_coco`; nothing is written if anything fails."""
    check_output_folder(out)  # fail before the slow part
    build = build_coco(data_root, num_folds, seed, exclude_bad, workers, progress)
    build.replaced = replacement_note(out, build)
    write_coco(build, out)
    return build


def replacement_note(out: str | os.PathLike, build: CocoBuild) -> str:
    """One line saying which other folds writing ``build`` into ``out`` replaces, or ``""``."""
    from uwm_d2.data.splits import assignment_digest, fold_assignment

    if not (Path(out) / MANIFEST).is_file():
        return ""
    try:
        old = fold_assignment(out)
    except UWMInputError:
        return f"replacing an unreadable COCO build in {str(out)!r}"
    if old == build.folds:
        return ""
    old_folds = len(set(old.values()))
    return (
        f"replacing the build in {str(out)!r}: {old_folds} folds (assignment "
        f"{assignment_digest(old)}) become {build.num_folds} folds (assignment "
        f"{assignment_digest(build.folds)}); runs trained on the old folds will refuse to resume "
        "or be scored on the new ones"
    )
