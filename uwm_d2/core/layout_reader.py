"""Reading the competition's data layout on disk: the scan index and the label / prediction CSVs.

(:mod:`uwm_d2.phantom.layout_writer` writes a data root in this layout.)

A data root holds ``train.csv`` (``id,class,segmentation``), ``sample_submission.csv``
(``id,class,predicted``) and ``<split>/case<N>/case<N>_day<M>/scans/slice_ZZZZ_W_H_PX_PY.png``.
Every reader here is strict and raises :class:`~uwm_d2.core.errors.UWMInputError` with a one-line
message naming the file, folder or row at fault: a silently skipped scan or row would shift a
volume or drop a case from the score without anyone noticing.

RLE strings are *not* decoded by the readers (that needs the scan shape and costs time); whoever
decodes them goes through :func:`decode_row`, which reports a failure as
``<file>: row <id> <class>: <message>``. :func:`label_table` is the one pivot of a label CSV to one
row per slice with a column per class, checked against the scans on disk.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from uwm_d2.core.errors import UWMInputError, one_line
from uwm_d2.core.ids import (
    CLASSES,
    ScanName,
    check_class,
    format_slice_id,
    parse_case_day,
    parse_scan_name,
    parse_slice_id,
)
from uwm_d2.core.rle import parse_rle, rle_decode

#: Columns of :func:`index_scans`, in this order.
SCAN_COLUMNS: tuple[str, ...] = (
    "id",
    "case",
    "day",
    "slice",
    "case_day",
    "path",
    "width",
    "height",
    "spacing_x",
    "spacing_y",
)

#: Case-days whose labels the data's hosts flagged as wrong; excludable from training by config.
BAD_CASE_DAYS: frozenset[str] = frozenset(
    {
        "case7_day0",
        "case81_day30",
        "case61_day14",
        "case9_day27",
        "case43_day18",
        "case43_day26",
        "case138_day0",
        "case34_day20",
        "case124_day19",
        "case144_day15",
        "case83_day11",
        "case13_day0",
    }
)


def check_data_root(root: str | os.PathLike, name: str = "data root") -> Path:
    """``root`` as a ``Path`` if it is a folder; else a one-line error naming it as ``name``.

    The one check of a data root, shared by every tool (``name`` is ``"UWM.DATA_ROOT"`` where the
    value came from a config).
    """
    if not str(root):
        raise UWMInputError(f"{name} is not set (the competition data root)")
    path = Path(root)
    if not path.is_dir():
        raise UWMInputError(f"{name} {str(path)!r} is not a folder")
    return path


def index_data_root(root: str | os.PathLike, split: str | None = None) -> pd.DataFrame:
    """:func:`index_scans` of ``split``, or of ``train/`` and ``test/`` together when ``None``.

    The one index of a whole data root (evaluation, export, MLE-bench's answers): whichever of the
    two splits exist, concatenated in that order, with a fresh ``RangeIndex``.

    Raises:
        UWMInputError: ``root`` is not a folder, has neither split, or holds one slice id in both;
            as :func:`index_scans`.
    """
    root = check_data_root(root)
    if split is not None:
        return index_scans(root, split)
    splits = [name for name in ("train", "test") if (root / name).is_dir()]
    if not splits:
        raise UWMInputError(f"data root {str(root)!r} has neither a train/ nor a test/ folder")
    scans = pd.concat([index_scans(root, name) for name in splits], ignore_index=True)
    repeated = scans["id"].duplicated()
    if repeated.any():
        slice_id = scans.loc[repeated.idxmax(), "id"]
        raise UWMInputError(f"scan {slice_id} is in both train/ and test/ of {str(root)!r}")
    return scans


def require_columns(
    frame: pd.DataFrame, required: Sequence[str], where: str, needs: str = ""
) -> None:
    """The one check that a table has the columns a reader needs.

    Args:
        frame: the table as read.
        required: its column names that must be present.
        where: how the message starts (the file, e.g. ``"CSV 'train.csv'"``).
        needs: what the message says in brackets; the columns the table has by default.

    Raises:
        UWMInputError: ``"<where>: no column 'a', 'b' (<needs>)"``.
    """
    missing = [column for column in required if column not in frame.columns]
    if missing:
        explained = needs or f"columns: {', '.join(map(repr, frame.columns))}"
        raise UWMInputError(f"{where}: no column {', '.join(map(repr, missing))} ({explained})")


def _visible_entries(folder: Path) -> list[os.DirEntry]:
    """Entries of ``folder`` sorted by name, without hidden files (``.DS_Store``, temp files)."""
    with os.scandir(folder) as entries:
        return sorted((entry for entry in entries if not entry.name.startswith(".")), key=_name)


def _name(entry: os.DirEntry) -> str:
    return entry.name


#: A patient folder; the number is spelt as in slice ids (ASCII digits, no leading zeros).
_CASE_FOLDER_RE = re.compile(r"case(0|[1-9]\d{0,5})", re.ASCII)


def _parse_case_folder(name: str, path: Path) -> int:
    """``case<N>`` → ``N``; anything else is an error naming the folder."""
    match = _CASE_FOLDER_RE.fullmatch(name)
    if match is None:
        raise UWMInputError(f"unexpected entry {str(path)!r} (expected a case<N> folder)")
    return int(match.group(1))


def index_scans(root: str | os.PathLike, split: str) -> pd.DataFrame:
    """Index every scan of ``root/<split>``, validating the folder and file names.

    Args:
        root: the data root (the folder holding ``train.csv`` and ``train/``).
        split: ``"train"`` or ``"test"`` (any sub-folder name is accepted).

    Returns:
        One row per scan, columns :data:`SCAN_COLUMNS`: ``id`` (competition slice id), ``case``,
        ``day``, ``slice`` (ints), ``case_day``, ``path`` (relative to ``root``, posix), ``width``,
        ``height`` (pixels, from the file name), ``spacing_x``, ``spacing_y`` (mm); sorted by case,
        day, slice, with a fresh ``RangeIndex``.

    Raises:
        UWMInputError: ``root/<split>`` is missing; an entry is not ``case<N>`` /
            ``case<N>_day<M>`` / ``scans`` / ``slice_ZZZZ_W_H_PX_PY.png``; a case-day folder sits in
            another case's folder or has no ``scans`` folder; a slice number repeats within a
            case-day; or the scans of one case-day differ in size or spacing (they could not be
            stacked into one volume).
    """
    root = Path(root)
    split_dir = root / split
    if not split_dir.is_dir():
        raise UWMInputError(f"split folder {str(split_dir)!r} does not exist")
    rows: list[tuple] = []
    for case_entry in _visible_entries(split_dir):
        case_path = Path(case_entry.path)
        case = _parse_case_folder(case_entry.name, case_path)
        if not case_entry.is_dir():
            raise UWMInputError(f"{str(case_path)!r} is a file, expected a case folder")
        for day_entry in _visible_entries(case_path):
            day_path = Path(day_entry.path)
            try:
                day_case, day = parse_case_day(day_entry.name)
            except UWMInputError:
                raise UWMInputError(
                    f"unexpected entry {str(day_path)!r} (expected a case{case}_day<M> folder)"
                ) from None
            if day_case != case or not day_entry.is_dir():
                raise UWMInputError(
                    f"{str(day_path)!r} is not a case-day folder of case{case} "
                    f"(expected case{case}_day<M>/)"
                )
            scans_path = day_path / "scans"
            if not scans_path.is_dir():
                raise UWMInputError(f"case-day folder {str(day_path)!r} has no scans folder")
            rows.extend(_index_case_day(root, scans_path, case, day))
    frame = pd.DataFrame(rows, columns=list(SCAN_COLUMNS))
    frame = frame.astype(
        {
            "case": "int64",
            "day": "int64",
            "slice": "int64",
            "width": "int64",
            "height": "int64",
            "spacing_x": "float64",
            "spacing_y": "float64",
        }
    )
    return frame.sort_values(["case", "day", "slice"], kind="stable", ignore_index=True)


def _index_case_day(root: Path, scans_path: Path, case: int, day: int) -> list[tuple]:
    """Rows of :func:`index_scans` for one ``scans`` folder."""
    case_day = f"case{case}_day{day}"
    rows: list[tuple] = []
    seen: dict[int, str] = {}
    first: ScanName | None = None
    for entry in _visible_entries(scans_path):
        file_path = Path(entry.path)
        try:
            scan = parse_scan_name(entry.name)
        except UWMInputError as error:
            raise UWMInputError(f"{str(file_path)!r}: {error}") from None
        if scan.slice in seen:
            raise UWMInputError(
                f"slice {scan.slice} of {case_day} appears twice: {seen[scan.slice]!r} and "
                f"{entry.name!r} in {str(scans_path)!r}"
            )
        seen[scan.slice] = entry.name
        if first is None:
            first = scan
        elif (scan.width, scan.height, scan.spacing_x, scan.spacing_y) != (
            first.width,
            first.height,
            first.spacing_x,
            first.spacing_y,
        ):
            raise UWMInputError(
                f"scan {str(file_path)!r} differs in size or spacing from {first.file_name!r} "
                f"of the same case-day (one case-day must stack into one volume)"
            )
        rows.append(
            (
                format_slice_id(case, day, scan.slice),
                case,
                day,
                scan.slice,
                case_day,
                file_path.relative_to(root).as_posix(),
                scan.width,
                scan.height,
                scan.spacing_x,
                scan.spacing_y,
            )
        )
    return rows


def read_label_csv(path: str | os.PathLike, value_column: str = "segmentation") -> pd.DataFrame:
    """Read a label CSV (``id,class,<value_column>``), validating every row; RLE stays encoded.

    Args:
        path: the CSV file (``train.csv``, a truth file or a submission).
        value_column: the RLE column, ``"segmentation"`` for labels, ``"predicted"`` for
            submissions.

    Returns:
        Columns ``id``, ``class``, ``value_column`` (all ``str``; empty cells are ``""``), in file
        order with a fresh ``RangeIndex``. Extra columns of the file are dropped.

    Raises:
        UWMInputError: the file is missing or empty or not parseable as CSV; a required column is
            missing (named with the file); an id is malformed or a class unknown (named with the
            row); an ``(id, class)`` pair appears twice (the id is named).
    """
    path = Path(path)
    frame = read_csv_cells(path)
    require_columns(frame, ("id", "class", value_column), f"CSV {str(path)!r}")
    return _validate_rows(path, frame[["id", "class", value_column]])


def read_prediction_csv(path: str | os.PathLike) -> pd.DataFrame:
    """Read a submission CSV; its RLE column may be called ``predicted`` or ``segmentation``.

    Returns:
        Columns ``id``, ``class``, ``predicted`` (see :func:`read_label_csv`).

    Raises:
        UWMInputError: as :func:`read_label_csv`; also when both or neither RLE column is present.
    """
    path = Path(path)
    frame = read_csv_cells(path)
    present = [column for column in ("predicted", "segmentation") if column in frame.columns]
    if len(present) != 1:
        problem = "both" if present else "neither"
        raise UWMInputError(
            f"CSV {str(path)!r} must have exactly one of the columns 'predicted' or "
            f"'segmentation', it has {problem}"
        )
    require_columns(frame, ("id", "class"), f"CSV {str(path)!r}")
    frame = frame[["id", "class", present[0]]].rename(columns={present[0]: "predicted"})
    return _validate_rows(path, frame)


def read_csv_cells(path: str | os.PathLike, what: str = "CSV") -> pd.DataFrame:
    """Read every cell as a string (empty cells stay ``""``), turning pandas' errors into ours.

    The one strict CSV reader of the label, submission and answers files; ``what`` names the
    file's kind in messages.
    """
    path = Path(path)
    if not path.is_file():
        state = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise UWMInputError(f"{what} {str(path)!r} {state}")
    try:
        # dtype=str and no NA parsing: ids such as "nan" or RLE "1 2" must stay text, and an
        # empty RLE cell must be "" rather than a float NaN.
        return pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False)
    except pd.errors.EmptyDataError:
        raise UWMInputError(f"{what} {str(path)!r} is empty (no header line)") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as error:
        raise UWMInputError(f"{what} {str(path)!r} cannot be parsed: {one_line(error)}") from None
    except OSError as error:
        reason = error.strerror or error
        raise UWMInputError(f"{what} {str(path)!r} cannot be read ({reason})") from None


def _validate_rows(path: Path, frame: pd.DataFrame) -> pd.DataFrame:
    """Check ids, classes and uniqueness of ``(id, class)``; return a clean copy."""
    frame = frame.reset_index(drop=True).copy()
    # Parse each distinct id once: train.csv repeats every id three times.
    for text in pd.unique(frame["id"]):
        try:
            parse_slice_id(text)
        except UWMInputError as error:
            raise UWMInputError(f"CSV {str(path)!r}: {error}") from None
    bad_class = ~frame["class"].isin(CLASSES)
    if bad_class.any():
        row = frame.loc[bad_class.idxmax()]
        try:
            check_class(row["class"])
        except UWMInputError as error:
            raise UWMInputError(f"CSV {str(path)!r}: row {row['id']}: {error}") from None
    duplicated = frame.duplicated(["id", "class"])
    if duplicated.any():
        row = frame.loc[duplicated.idxmax()]
        raise UWMInputError(
            f"CSV {str(path)!r}: row {row['id']} {row['class']} appears more than once"
        )
    return frame


def row_context(csv_name: str, slice_id: str, class_name: str = "") -> str:
    """``"<file>: row <id> <class>"``: how every message about one CSV row starts."""
    return f"{csv_name}: row {slice_id}" + (f" {class_name}" if class_name else "")


def decode_row(
    rle: str, shape: tuple[int, int], csv_name: str, slice_id: str, class_name: str
) -> np.ndarray:
    """:func:`~uwm_d2.core.rle.rle_decode` of one CSV cell; a bad string names its row.

    Raises:
        UWMInputError: ``"<file>: row <id> <class>: <what is wrong>"``.
    """
    try:
        return rle_decode(rle, shape)
    except UWMInputError as error:
        raise UWMInputError(f"{row_context(csv_name, slice_id, class_name)}: {error}") from None


def check_row(rle: str, num_pixels: int, csv_name: str, slice_id: str, class_name: str) -> None:
    """Validate one CSV cell's RLE without decoding it (see :func:`decode_row`)."""
    try:
        parse_rle(rle, num_pixels)
    except UWMInputError as error:
        raise UWMInputError(f"{row_context(csv_name, slice_id, class_name)}: {error}") from None


def label_table(
    labels: pd.DataFrame,
    value_column: str,
    csv_name: str,
    scan_ids: pd.Index | set[str] | None = None,
    scan_folder: str = "",
) -> pd.DataFrame:
    """One row per slice id, one column per class (:data:`CLASSES` order), RLE strings as cells.

    Args:
        labels: rows of :func:`read_label_csv` / :func:`read_prediction_csv`.
        value_column: their RLE column.
        csv_name: the file's name, for messages.
        scan_ids: when given, the ids of the scans on disk: every row must have its scan.
        scan_folder: where those scans are, for the message.

    Returns:
        A frame indexed by id (in first-seen order) with the columns :data:`CLASSES`.

    Raises:
        UWMInputError: a row whose id has no scan (``"<file>: row <id> has no scan under ..."``);
            an id without a row for every class (``"<file>: id <id> has no row for class ..."``).
    """
    if scan_ids is not None:
        missing = ~labels["id"].isin(scan_ids)
        if missing.any():
            slice_id = labels.loc[missing.idxmax(), "id"]
            raise UWMInputError(
                f"{row_context(csv_name, slice_id)} has no scan under {scan_folder!r}"
            )
    wide = labels.pivot(index="id", columns="class", values=value_column)
    wide = wide.reindex(index=pd.unique(labels["id"]), columns=list(CLASSES))
    incomplete = wide.isna().any(axis=1)
    if incomplete.any():
        slice_id = incomplete.idxmax()
        absent = [name for name in CLASSES if pd.isna(wide.loc[slice_id, name])]
        raise UWMInputError(f"{csv_name}: id {slice_id} has no row for class {', '.join(absent)}")
    return wide
