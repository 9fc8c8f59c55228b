"""Export a data root's case-days as NIfTI: the scan, a label map and (optionally) per-class masks.

The job behind ``tools/export_nifti.py``, next to the other data-root jobs of this package (the
COCO build); the file format itself (layout, affine, labels, writing) is :mod:`uwm_d2.core.nifti`.
Numpy, pandas and nibabel only (no torch).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from uwm_d2.core.atomic import check_output_folder, check_writable_target, output_folder
from uwm_d2.core.errors import UWMInputError
from uwm_d2.core.ids import CLASSES, parse_case_day
from uwm_d2.core.io import read_scan
from uwm_d2.core.layout_reader import (
    check_row,
    decode_row,
    index_data_root,
    label_table,
    read_prediction_csv,
)
from uwm_d2.core.nifti import (
    NewFiles,
    case_day_affine,
    label_map,
    nifti_image,
    to_xyz,
    volume_ml,
    volumes_csv_text,
)
from uwm_d2.core.progress import Progress

#: Columns of a single label file's ``--volumes`` CSV.
VOLUME_COLUMNS: tuple[str, ...] = ("case_day", "class", "voxels", "volume_ml")


def volume_rows(masks: np.ndarray, case_day: str, spacing_x: float, spacing_y: float) -> list[dict]:
    """One ``{case_day, class, voxels, volume_ml}`` per class of ``(C, D, H, W)`` masks."""
    rows = []
    for class_index, name in enumerate(CLASSES):
        voxels = int(np.count_nonzero(masks[class_index]))
        rows.append(
            {
                "case_day": case_day,
                "class": name,
                "voxels": voxels,
                "volume_ml": volume_ml(voxels, spacing_x, spacing_y),
            }
        )
    return rows


@dataclass(frozen=True)
class ExportSummary:
    """What :func:`export_case_days` wrote."""

    out: Path
    case_days: tuple[str, ...]
    files: int
    slices: int
    volumes_csv: Path | None


def _select_case_days(
    available: Sequence[str],
    wanted: Sequence[str] | None,
    csv_name: str,
    scans: pd.DataFrame,
    scan_folder: str,
) -> list[str]:
    """``wanted`` (in the given order, repeats dropped), each checked; ``available`` if none."""
    if not wanted:
        return list(available)
    on_disk = set(scans["case_day"])
    for case_day in wanted:
        parse_case_day(case_day)  # a malformed name is its own error
        if case_day not in on_disk:
            raise UWMInputError(f"unknown case-day {case_day!r}: no scans under {scan_folder!r}")
        if case_day not in available:
            raise UWMInputError(f"case-day {case_day!r} has no rows in {csv_name}")
    return list(dict.fromkeys(wanted))


def export_case_days(
    data_root: str | os.PathLike,
    labels_csv: str | os.PathLike,
    out: str | os.PathLike,
    *,
    split: str | None = None,
    case_days: Sequence[str] | None = None,
    per_class: bool = False,
    volumes_csv: str | os.PathLike | None = None,
    progress: bool = True,
) -> ExportSummary:
    """Write each case-day of a label CSV as NIfTI: scan, label map, optionally per-class masks.

    For each case-day: ``out/<case_day>.nii.gz`` (``uint16`` scan), ``out/<case_day>_seg.nii.gz``
    (``uint8`` labels, :data:`~uwm_d2.core.nifti.OVERLAP_PRIORITY` where masks overlap) and,
    with ``per_class``, ``out/<case_day>_<class>.nii.gz`` (exact 0/1 masks). The volume holds
    every scan of the case-day on disk; a slice without rows in the CSV has empty masks.

    Args:
        data_root: the competition layout (only ``split``, or ``train/`` and ``test/``).
        labels_csv: ``id,class,segmentation`` (truth) or ``id,class,predicted`` (submission).
        out: the output folder (created; removed again if this call created it and fails).
        split: the sub-folder of scans; both ``train`` and ``test`` when ``None``.
        case_days: only these (each must have rows in the CSV); every case-day of the CSV when
            empty.
        per_class: also write the per-class masks.
        volumes_csv: also write ``case_day,class,voxels,volume_ml`` (exact masks) here.
        progress: show progress per case-day on stderr.

    Raises:
        UWMInputError: a bad CSV (named with its row), a row whose id has no scan, an unknown
            case-day, a bad RLE or scan, an output path that cannot be written. Checked before
            anything is written where possible; a later failure removes the files this run created.
    """
    root = Path(data_root)
    labels_path = Path(labels_csv)
    check_output = Path(out)
    check_output_folder(check_output)
    if volumes_csv is not None:
        _check_volumes_target(Path(volumes_csv), check_output)
    labels = read_prediction_csv(labels_path)
    if labels.empty:
        raise UWMInputError(f"CSV {str(labels_path)!r} has no rows")
    scans = index_data_root(root, split)
    scan_folder = str(root / split) if split else str(root)
    table = label_table(labels, "predicted", labels_path.name, set(scans["id"]), scan_folder)
    scans = scans.set_index("id", drop=False)
    in_csv = scans.loc[table.index]
    available = sorted(pd.unique(in_csv["case_day"]), key=lambda case_day: parse_case_day(case_day))
    selected = _select_case_days(available, case_days, labels_path.name, scans, scan_folder)
    groups = {case_day: scans[scans["case_day"] == case_day] for case_day in selected}
    # Every RLE is checked before the first file is written: a bad row fails in a second.
    for group in groups.values():
        height, width = int(group["height"].iloc[0]), int(group["width"].iloc[0])
        for slice_id in group.index.intersection(table.index):
            for name in CLASSES:
                rle = table.at[slice_id, name]
                if rle:
                    check_row(rle, height * width, labels_path.name, slice_id, name)

    total = sum(len(group) for group in groups.values())
    written = NewFiles()
    rows: list[dict] = []
    with output_folder(check_output) as folder:
        try:
            with Progress(
                total,
                "export",
                "slice",
                enabled=progress,
                group_unit="case-day",
                group_total=len(groups),
            ) as bar:
                for case_day, group in groups.items():
                    rows += _export_one(
                        root, case_day, group, table, labels_path.name, folder, per_class, written
                    )
                    bar.update(len(group))
            if volumes_csv is not None:
                written.write_text(Path(volumes_csv), volumes_csv_text(rows, VOLUME_COLUMNS))
        except BaseException:
            written.remove()
            raise
    return ExportSummary(
        check_output,
        tuple(selected),
        len(written.paths),
        total,
        Path(volumes_csv) if volumes_csv is not None else None,
    )


def _check_volumes_target(path: Path, out: Path) -> None:
    """Fail early unless the volumes CSV can be written; it may go into the output folder, which
    this run creates."""
    if os.path.abspath(path.parent) == os.path.abspath(out) and not out.exists():
        if path.name in ("", ".", ".."):
            raise UWMInputError(f"volumes CSV {str(path)!r} is not a file name")
        return  # check_output_folder covers the folder
    check_writable_target(path)


def _export_one(
    root: Path,
    case_day: str,
    group: pd.DataFrame,
    table: pd.DataFrame,
    csv_name: str,
    folder: Path,
    per_class: bool,
    written: NewFiles,
) -> list[dict]:
    """Write one case-day's files; return its volume rows."""
    group = group.sort_values("slice")
    height, width = int(group["height"].iloc[0]), int(group["width"].iloc[0])
    spacing_x, spacing_y = float(group["spacing_x"].iloc[0]), float(group["spacing_y"].iloc[0])
    scan = np.stack([read_scan(root / path, (height, width)) for path in group["path"]])
    masks = np.zeros((len(CLASSES), len(group), height, width), dtype=bool)
    for depth, slice_id in enumerate(group.index):
        if slice_id not in table.index:
            continue
        for class_index, name in enumerate(CLASSES):
            rle = table.at[slice_id, name]
            if rle:
                masks[class_index, depth] = decode_row(
                    rle, (height, width), csv_name, slice_id, name
                )
    affine = case_day_affine(spacing_x, spacing_y)
    written.write(folder / f"{case_day}.nii.gz", nifti_image(to_xyz(scan), affine, "scan"))
    labels = label_map(masks)
    written.write(folder / f"{case_day}_seg.nii.gz", nifti_image(to_xyz(labels), affine, "labels"))
    if per_class:
        for class_index, name in enumerate(CLASSES):
            image = nifti_image(to_xyz(masks[class_index]), affine, "mask")
            written.write(folder / f"{case_day}_{name}.nii.gz", image)
    return volume_rows(masks, case_day, spacing_x, spacing_y)
