"""Every tool meets bad input the same way: one stderr line naming the culprit, and nothing written.

The one bad-input harness of the tools: one table row per (tool, bad input). Each row runs the real
tool as a subprocess on a private copy of the tiny phantom and asserts: exit status 2, stderr is
exactly one non-empty ``error: ...`` line that contains the culprit (row id, file name, key or
path), no ``Traceback`` anywhere, nothing on stdout (but the log of a tool that logs there), and
the case's folder (data root and outputs) lists exactly the same files and folders, files with
the same sizes and times, as before the run: no output, no temp file, no half-created folder.

The rows run side by side in a thread pool (each is a subprocess, mostly interpreter and import
start-up); the torch tools go first because they are the slow ones (marked slow: make test-fast
leaves them out), and the rows that load a checkpoint wait for the untrained one built in the
background.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from uwm_d2.core.ids import CLASSES
from uwm_d2.core.layout_reader import index_scans
from uwm_d2.evaluation.mlebench import answers_from_data_root

from ..conftest import FAST_INFERENCE_OPTS, INSTANT_CONFIG, INSTANT_CONFIGS, REPO_ROOT, run_tool
from .conftest import CheckpointBuild

#: An id that would point outside the data root if anything built a path from raw CSV text.
TRAVERSAL_ID = "case1_day1_slice_0001/../../x"


@dataclass(frozen=True)
class Ctx:
    """Where one row runs: its private data root, its folder, and the checkpoints."""

    root: Path
    tmp: Path
    checkpoints: dict[str, Path]


@dataclass(frozen=True)
class Case:
    """A tool, a way to break its input (returns the culprit) and the tool's arguments."""

    tool: str
    breaks: Callable[[Ctx], str]
    args: Callable[[Ctx], list[str]]
    xfail: str = ""  # a known bug elsewhere: the row must fail until it is fixed (strict)
    run: bool = True  # False: a known bug whose row would be slow while it lasts; not run
    uses_checkpoints: bool = False

    @property
    def waits_for_checkpoints(self) -> bool:
        return self.uses_checkpoints or self.tool == "infer_submit"


# ---------------------------------------------------------------------------------------------
# Ways to break the input. Each edits the private copy and returns the text the error must name.


def _edit_csv(path: Path, edit: Callable[[pd.DataFrame], str]) -> str:
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    culprit = edit(frame)
    frame.to_csv(path, index=False)
    return culprit


def _row_with_value(frame: pd.DataFrame, column: str) -> int:
    """The first row with a non-empty RLE (row 0 when every row is empty)."""
    filled = np.flatnonzero(frame[column] != "")
    return int(filled[0]) if filled.size else 0


def _num_pixels(root: Path, slice_id: str) -> int:
    for split in ("train", "test"):
        scans = index_scans(root, split)
        found = scans[scans["id"] == slice_id]
        if len(found):
            return int(found["height"].iloc[0] * found["width"].iloc[0])
    raise AssertionError(f"{slice_id} is not in the phantom")


def bad_rle(csv: str, column: str, rle: str | Callable[[int], str]) -> Callable[[Ctx], str]:
    """Put a malformed RLE into the first labelled row; ``rle`` may depend on H * W."""

    def breaks(ctx: Ctx) -> str:
        def edit(frame: pd.DataFrame) -> str:
            row = _row_with_value(frame, column)
            slice_id = frame.loc[row, "id"]
            text = rle(_num_pixels(ctx.root, slice_id)) if callable(rle) else rle
            frame.loc[row, column] = text
            return f"row {slice_id} {frame.loc[row, 'class']}"

        return _edit_csv(ctx.root / csv, edit)

    return breaks


def set_cell(csv: str, column: str, value: str, row: int = 2) -> Callable[[Ctx], str]:
    """Replace one cell (an id or a class); the culprit is the new value."""

    def breaks(ctx: Ctx) -> str:
        def edit(frame: pd.DataFrame) -> str:
            frame.loc[row, column] = value
            return value

        return _edit_csv(ctx.root / csv, edit)

    return breaks


def duplicate_row(csv: str) -> Callable[[Ctx], str]:
    def breaks(ctx: Ctx) -> str:
        def edit(frame: pd.DataFrame) -> str:
            frame.loc[len(frame)] = frame.loc[4]
            return f"row {frame.loc[4, 'id']} {frame.loc[4, 'class']}"

        return _edit_csv(ctx.root / csv, edit)

    return breaks


def rename_column(csv: str, column: str) -> Callable[[Ctx], str]:
    def breaks(ctx: Ctx) -> str:
        def edit(frame: pd.DataFrame) -> str:
            frame.columns = ["rle" if name == column else name for name in frame.columns]
            return csv

        return _edit_csv(ctx.root / csv, edit)

    return breaks


def empty_csv(csv: str) -> Callable[[Ctx], str]:
    def breaks(ctx: Ctx) -> str:
        (ctx.root / csv).write_bytes(b"")
        return csv

    return breaks


def header_only(csv: str) -> Callable[[Ctx], str]:
    def breaks(ctx: Ctx) -> str:
        path = ctx.root / csv
        path.write_text(path.read_text().splitlines()[0] + "\n")
        return csv

    return breaks


def _scan(root: Path, split: str, position: int) -> Path:
    return sorted((root / split).rglob("*.png"))[position]


def missing_scan(split: str, position: int = 3) -> Callable[[Ctx], str]:
    def breaks(ctx: Ctx) -> str:
        path = _scan(ctx.root, split, position)
        path.unlink()
        return f"{path.parent.parent.name}_slice_{path.name.split('_')[1]}"

    return breaks


def _encode(image: np.ndarray) -> bytes:
    ok, encoded = cv2.imencode(".png", image)
    assert ok
    return encoded.tobytes()


def _rewrite_png(how: str) -> Callable[[Path], None]:
    def rewrite(path: Path) -> None:
        data = path.read_bytes()
        height, width = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED).shape
        if how == "corrupt":  # bit rot inside the image data: the chunk's CRC no longer matches
            middle = len(data) // 2
            data = data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1 :]
        elif how == "truncated":
            data = data[: len(data) // 2]
        elif how == "8-bit":
            data = _encode(np.full((height, width), 100, np.uint8))
        elif how == "rgb":
            data = _encode(np.full((height, width, 3), 1000, np.uint16))
        elif how == "wrong-size":
            data = _encode(np.full((height // 2, width + 3), 1000, np.uint16))
        path.write_bytes(data)

    return rewrite


def bad_png(how: str, split: str = "train", position: int = 3) -> Callable[[Ctx], str]:
    def breaks(ctx: Ctx) -> str:
        path = _scan(ctx.root, split, position)
        _rewrite_png(how)(path)
        return path.name

    return breaks


def unwritable_folder(tmp: Path) -> Path:
    """A folder path nobody can create files in.

    ``chmod 555`` does it for an ordinary user; root ignores file modes, so there the path is a
    regular file instead (nothing can be created under a file, whoever asks).
    """
    locked = tmp / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    if os.access(locked, os.W_OK):  # running as root
        locked.chmod(0o755)
        locked.rmdir()
        locked.write_text("a file where a folder should be\n")
    return locked


def locked_output(ctx: Ctx) -> str:
    return str(unwritable_folder(ctx.tmp))


def no_parent(ctx: Ctx) -> str:
    return str(ctx.tmp / "missing_parent")


def train_output_exists(breaks: Callable[[Ctx], str]) -> Callable[[Ctx], str]:
    """``breaks``, with ``OUTPUT_DIR`` made beforehand (a user re-running into the same folder)."""

    def both(ctx: Ctx) -> str:
        (ctx.tmp / "train").mkdir()
        return breaks(ctx)

    return both


def coco_built(breaks: Callable[[Ctx], str]) -> Callable[[Ctx], str]:
    """``breaks``, after building the COCO files into ``tmp/coco`` and making ``OUTPUT_DIR``."""

    def both(ctx: Ctx) -> str:
        from uwm_d2.data.coco import make_coco

        make_coco(ctx.root, ctx.tmp / "coco", num_folds=2, workers=1, progress=False)
        (ctx.tmp / "train").mkdir()
        return breaks(ctx)

    return both


def checkpoint(name: str) -> Callable[[Ctx], str]:
    def breaks(ctx: Ctx) -> str:
        return name

    return breaks


def not_a_checkpoint(ctx: Ctx) -> str:
    (ctx.tmp / "weights.pth").write_bytes(b"this is not a torch checkpoint\n" * 10)
    return "weights.pth"


def config_key(ctx: Ctx) -> str:
    return "FOO.BAR"


def unknown_case_day(ctx: Ctx) -> str:
    return "case999_day0"


# ---------------------------------------------------------------------------------------------
# Arguments of each tool.


def coco_args(ctx: Ctx, out: Path | None = None) -> list[str]:
    out = out or ctx.tmp / "coco"
    return ["--data-root", str(ctx.root), "--out", str(out), "--folds", "2", "--workers", "1"]


def coco_args_parallel(ctx: Ctx) -> list[str]:
    return [*coco_args(ctx)[:-1], "2"]


def coco_args_locked(ctx: Ctx) -> list[str]:
    return coco_args(ctx, ctx.tmp / "locked" / "coco")


def eval_args(ctx: Ctx, json_path: Path | None = None) -> list[str]:
    return [
        "--data-root",
        str(ctx.root),
        "--truth",
        str(ctx.root / "test_truth.csv"),
        "--pred",
        str(ctx.root / "sample_submission.csv"),
        "--json",
        str(json_path or ctx.tmp / "scores.json"),
    ]


def eval_args_no_parent(ctx: Ctx) -> list[str]:
    return eval_args(ctx, ctx.tmp / "missing_parent" / "scores.json")


def eval_args_locked(ctx: Ctx) -> list[str]:
    return eval_args(ctx, ctx.tmp / "locked" / "scores.json")


def phantom_args(out: str) -> Callable[[Ctx], list[str]]:
    def args(ctx: Ctx) -> list[str]:
        return ["--out", str(ctx.tmp / out), "--cases", "1", "--max-slices", "2", "--workers", "1"]

    return args


def _test_case_day(ctx: Ctx) -> str:
    return sorted((ctx.root / "test").glob("case*/case*_day*"))[0].name


def vis_args(
    truth: bool = False, pred: bool = False, out: str = "pictures", case_day: str = ""
) -> Callable[[Ctx], list[str]]:
    def args(ctx: Ctx) -> list[str]:
        chosen = case_day or _test_case_day(ctx)
        result = ["--data-root", str(ctx.root), "--split", "test", "--case-day", chosen]
        result += ["--out", str(ctx.tmp / out), "--slices", "8"]
        if truth:
            result += ["--truth", str(ctx.root / "test_truth.csv")]
        if pred:
            result += ["--pred", str(ctx.root / "sample_submission.csv")]
        return result

    return args


def infer_args(
    weights: str = "model_final", out: str = "submission.csv", opts: tuple[str, ...] = ()
) -> Callable[[Ctx], list[str]]:
    def args(ctx: Ctx) -> list[str]:
        weights_path = ctx.checkpoints.get(weights, ctx.tmp / weights)
        return [
            "--config-file",
            str(INSTANT_CONFIG),
            "--data-root",
            str(ctx.root),
            "--out",
            str(ctx.tmp / out),
            *FAST_INFERENCE_OPTS,
            "MODEL.WEIGHTS",
            str(weights_path),
            *opts,
        ]

    return args


def train_args(
    *opts: str, eval_only: bool = False, output: str = "train"
) -> Callable[[Ctx], list[str]]:
    def args(ctx: Ctx) -> list[str]:
        result = ["--config-file", str(INSTANT_CONFIG)]
        if eval_only:
            result += ["--eval-only"]
        result += ["UWM.DATA_ROOT", str(ctx.root), "UWM.NUM_FOLDS", "2"]
        result += ["OUTPUT_DIR", str(ctx.tmp / output), *FAST_INFERENCE_OPTS]
        for option in opts:
            result.append(option.format(tmp=ctx.tmp, **ctx.checkpoints))
        return result

    return args


def cv_args(*flags: str, opts: tuple[str, ...] = ()) -> Callable[[Ctx], list[str]]:
    def args(ctx: Ctx) -> list[str]:
        result = ["--config-file", str(INSTANT_CONFIG), "--out", str(ctx.tmp / "cv")]
        result += [flag.format(tmp=ctx.tmp) for flag in flags]
        return [*result, "UWM.DATA_ROOT", str(ctx.root), "UWM.NUM_FOLDS", "2", *opts]

    return args


def choose_args(*folders: str) -> Callable[[Ctx], list[str]]:
    def args(ctx: Ctx) -> list[str]:
        cvs = [item for folder in folders for item in ("--cv", str(ctx.tmp / folder))]
        return [*cvs, "--cv", str(ctx.tmp / "other"), "--out", str(ctx.tmp / "ensemble.yaml")]

    return args


def export_model_args(
    weights: str = "{tmp}/weights.pth", out: str = "export", opts: tuple[str, ...] = ()
) -> Callable[[Ctx], list[str]]:
    def args(ctx: Ctx) -> list[str]:
        config = REPO_ROOT / INSTANT_CONFIGS["semantic"]
        result = ["--config-file", str(config), "--format", "onnx", "--out", str(ctx.tmp / out)]
        return [*result, "MODEL.WEIGHTS", weights.format(tmp=ctx.tmp), *opts]

    return args


def with_answers(breaks: Callable[[Ctx], str]) -> Callable[[Ctx], str]:
    """``breaks``, after writing the answers file of the (intact) truth to tmp/answers.csv."""

    def both(ctx: Ctx) -> str:
        answers = answers_from_data_root(ctx.root, ctx.root / "test_truth.csv")
        answers.to_csv(ctx.tmp / "answers.csv", index=False)
        return breaks(ctx)

    return both


def _sample(ctx: Ctx) -> tuple[Path, pd.DataFrame]:
    path = ctx.root / "sample_submission.csv"
    return path, pd.read_csv(path, dtype=str, keep_default_na=False)


def overlapping_runs(ctx: Ctx) -> str:
    """Overlapping runs in row 5 of the sample submission (1-based data row)."""
    path, frame = _sample(ctx)
    frame.loc[4, "predicted"] = "1 5 3 2"
    frame.to_csv(path, index=False)
    return f"MLE-bench would reject this file: row 5 ({frame.loc[4, 'id']} {frame.loc[4, 'class']})"


def unsorted_runs(ctx: Ctx) -> str:
    path, frame = _sample(ctx)
    frame.loc[7, "predicted"] = "50 2 10 2"  # runs not sorted by start
    frame.to_csv(path, index=False)
    return "MLE-bench would reject this file: row 8 "


def swapped_rows(ctx: Ctx) -> str:
    path, frame = _sample(ctx)
    frame.iloc[[0, 1]] = frame.iloc[[1, 0]].to_numpy()
    frame.to_csv(path, index=False)
    return "MLE-bench would reject this file: row 1 "


def says(text: str) -> Callable[[Ctx], str]:
    """Nothing to break: the arguments are wrong, and the error must say ``text``."""
    return lambda ctx: text


def a_file(ctx: Ctx) -> str:
    """A file where the output's parent folder should be."""
    (ctx.tmp / "a_file").write_text("")
    return "a_file"


def nifti_series(ctx: Ctx) -> str:
    nib.save(nib.Nifti1Image(np.zeros((6, 5, 4, 2), np.int16), np.eye(4)), ctx.tmp / "in.nii.gz")
    return "in.nii.gz"


def renamed_png(ctx: Ctx) -> str:
    shutil.copyfile(next((ctx.root / "test").rglob("*.png")), ctx.tmp / "in.nii.gz")
    return "in.nii.gz"


def nifti_and_a_file(ctx: Ctx) -> str:
    nib.save(nib.Nifti1Image(np.zeros((6, 5, 4), np.int16), np.eye(4)), ctx.tmp / "in.nii.gz")
    return a_file(ctx)


def ids_without_scans(ctx: Ctx) -> str:
    rows = [("case999_day0_slice_0001", name, "") for name in CLASSES]
    frame = pd.DataFrame(rows, columns=["id", "class", "segmentation"])
    frame.to_csv(ctx.tmp / "labels.csv", index=False)
    return "case999_day0_slice_0001"


def eval_reading_args(reading: str) -> Callable[[Ctx], list[str]]:
    """evaluate on the sample submission under ``reading``, with --json."""

    def args(ctx: Ctx) -> list[str]:
        return [*eval_args(ctx), "--reading", reading]

    return args


def answers_args(*extra: str) -> Callable[[Ctx], list[str]]:
    """evaluate against tmp/answers.csv (no data root) on the sample submission, with --json."""

    def args(ctx: Ctx) -> list[str]:
        pred = ctx.root / "sample_submission.csv"
        answers = ["--answers", str(ctx.tmp / "answers.csv"), "--pred", str(pred)]
        return [*answers, *extra, "--json", str(ctx.tmp / "scores.json")]

    return args


def volumes_args(ctx: Ctx) -> list[str]:
    truth = str(ctx.root / "test_truth.csv")
    root = ["--data-root", str(ctx.root), "--truth", truth, "--pred", truth]
    return [*root, "--volumes", str(ctx.tmp / "a_file" / "volumes.csv")]


#: predict_nifti's model: never loaded, since every row fails on its input first.
PREDICT_MODEL = [
    *["--config-file", INSTANT_CONFIGS["semantic"], "MODEL.WEIGHTS", "never_read.pth"],
    *["MODEL.DEVICE", "cpu"],
]


def predict_args(out: str = "out") -> Callable[[Ctx], list[str]]:
    def args(ctx: Ctx) -> list[str]:
        return ["--input", str(ctx.tmp / "in.nii.gz"), "--out", str(ctx.tmp / out), *PREDICT_MODEL]

    return args


def export_args(
    labels: str = "data/test_truth.csv", out: str = "out", *extra: str
) -> Callable[[Ctx], list[str]]:
    def args(ctx: Ctx) -> list[str]:
        paths = ["--labels", str(ctx.tmp / labels), "--out", str(ctx.tmp / out)]
        return ["--data-root", str(ctx.root), *paths, *extra]

    return args


CASES: dict[str, Case] = {
    # make_coco: train.csv, train/ scans, the output folder.
    "coco-rle-odd-tokens": Case(
        "make_coco", bad_rle("train.csv", "segmentation", "1 2 3"), coco_args
    ),
    "coco-rle-non-integer": Case(
        "make_coco", bad_rle("train.csv", "segmentation", "1 2 x 4"), coco_args
    ),
    "coco-rle-start-0": Case("make_coco", bad_rle("train.csv", "segmentation", "0 3"), coco_args),
    "coco-rle-zero-length": Case(
        "make_coco", bad_rle("train.csv", "segmentation", "5 0"), coco_args
    ),
    "coco-rle-past-end": Case(
        "make_coco", bad_rle("train.csv", "segmentation", lambda hw: f"{hw} 2"), coco_args
    ),
    "coco-rle-unsorted": Case(
        "make_coco", bad_rle("train.csv", "segmentation", "7 3 1 2"), coco_args
    ),
    "coco-unknown-class": Case("make_coco", set_cell("train.csv", "class", "liver"), coco_args),
    "coco-malformed-id": Case(
        "make_coco", set_cell("train.csv", "id", "case1_dayX_slice_0001"), coco_args
    ),
    "coco-path-in-id": Case("make_coco", set_cell("train.csv", "id", TRAVERSAL_ID), coco_args),
    "coco-duplicate-id": Case("make_coco", duplicate_row("train.csv"), coco_args),
    "coco-missing-column": Case("make_coco", rename_column("train.csv", "segmentation"), coco_args),
    "coco-empty-csv": Case("make_coco", empty_csv("train.csv"), coco_args),
    "coco-header-only-csv": Case("make_coco", header_only("train.csv"), coco_args),
    "coco-missing-scan": Case("make_coco", missing_scan("train"), coco_args),
    "coco-corrupt-png": Case("make_coco", bad_png("corrupt"), coco_args),
    "coco-corrupt-png-in-worker": Case("make_coco", bad_png("corrupt"), coco_args_parallel),
    "coco-truncated-png": Case("make_coco", bad_png("truncated"), coco_args),
    "coco-8bit-png": Case("make_coco", bad_png("8-bit"), coco_args),
    "coco-rgb-png": Case("make_coco", bad_png("rgb"), coco_args),
    "coco-png-size-not-name": Case("make_coco", bad_png("wrong-size"), coco_args),
    "coco-unwritable-output": Case("make_coco", locked_output, coco_args_locked),
    # evaluate: the truth and prediction CSVs, the scans' names, the --json target.
    "eval-pred-rle-overlapping": Case(
        "evaluate", bad_rle("sample_submission.csv", "predicted", "1 5 3 2"), eval_args
    ),
    "eval-pred-rle-non-integer": Case(
        "evaluate", bad_rle("sample_submission.csv", "predicted", "1.5 2"), eval_args
    ),
    "eval-truth-rle-past-end": Case(
        "evaluate",
        bad_rle("test_truth.csv", "segmentation", lambda hw: f"{hw - 1} 3"),
        eval_args,
    ),
    "eval-unknown-class": Case(
        "evaluate", set_cell("sample_submission.csv", "class", "liver"), eval_args
    ),
    "eval-malformed-id": Case(
        "evaluate", set_cell("test_truth.csv", "id", "case1_day1_slice_1"), eval_args
    ),
    "eval-path-in-id": Case(
        "evaluate", set_cell("sample_submission.csv", "id", TRAVERSAL_ID), eval_args
    ),
    "eval-duplicate-id": Case("evaluate", duplicate_row("sample_submission.csv"), eval_args),
    "eval-missing-column": Case(
        "evaluate", rename_column("sample_submission.csv", "predicted"), eval_args
    ),
    "eval-empty-csv": Case("evaluate", empty_csv("sample_submission.csv"), eval_args),
    "eval-header-only-truth": Case("evaluate", header_only("test_truth.csv"), eval_args),
    "eval-missing-scan": Case("evaluate", missing_scan("test"), eval_args),
    "eval-no-output-parent": Case("evaluate", no_parent, eval_args_no_parent),
    "eval-unwritable-output": Case("evaluate", locked_output, eval_args_locked),
    # make_phantom: only its output folder can be wrong.
    "phantom-unwritable-output": Case("make_phantom", locked_output, phantom_args("locked/data")),
    # visualize: CSVs and scans of the drawn case-day, the case-day itself, the output folder.
    "vis-truth-rle-start-0": Case(
        "visualize", bad_rle("test_truth.csv", "segmentation", "0 4"), vis_args(truth=True)
    ),
    "vis-pred-unknown-class": Case(
        "visualize", set_cell("sample_submission.csv", "class", "liver"), vis_args(pred=True)
    ),
    "vis-truncated-png": Case(
        "visualize", bad_png("truncated", "test", position=0), vis_args(out="new/pictures")
    ),
    "vis-unknown-case-day": Case(
        "visualize", unknown_case_day, vis_args(case_day="case999_day0", out="new/pictures")
    ),
    "vis-unwritable-output": Case("visualize", locked_output, vis_args(out="locked/pictures")),
    # infer_submit: config, checkpoint, sample submission, test/ scans, output path.
    "infer-unknown-config-key": Case("infer_submit", config_key, infer_args(opts=("FOO.BAR", "1"))),
    "infer-checkpoint-4-classes": Case(
        "infer_submit", checkpoint("model_4_classes.pth"), infer_args(weights="model_4_classes")
    ),
    "infer-not-a-checkpoint": Case(
        "infer_submit", not_a_checkpoint, infer_args(weights="weights.pth")
    ),
    "infer-missing-scan": Case("infer_submit", missing_scan("test"), infer_args()),
    "infer-path-in-sample-id": Case(
        "infer_submit", set_cell("sample_submission.csv", "id", TRAVERSAL_ID), infer_args()
    ),
    "infer-duplicate-sample-id": Case(
        "infer_submit", duplicate_row("sample_submission.csv"), infer_args()
    ),
    "infer-empty-sample-csv": Case(
        "infer_submit", empty_csv("sample_submission.csv"), infer_args()
    ),
    "infer-rgb-png": Case("infer_submit", bad_png("rgb", "test", position=0), infer_args()),
    "infer-no-output-parent": Case(
        "infer_submit", no_parent, infer_args(out="missing_parent/submission.csv")
    ),
    "infer-unwritable-output": Case(
        "infer_submit", locked_output, infer_args(out="locked/submission.csv")
    ),
    # train_net: config, data (through the COCO build), OUTPUT_DIR, the checkpoint to evaluate.
    "train-unknown-config-key": Case("train_net", config_key, train_args("FOO.BAR", "1")),
    "train-bad-train-csv": Case(
        "train_net", train_output_exists(set_cell("train.csv", "class", "liver")), train_args()
    ),
    "train-bad-train-csv-new-output-dir": Case(
        "train_net",
        set_cell("train.csv", "class", "liver"),
        train_args(),
    ),
    "train-output-dir-unwritable": Case(
        "train_net", locked_output, train_args(output="locked/train")
    ),
    "train-eval-only-no-weights": Case(
        "train_net", lambda ctx: "--eval-only needs a checkpoint", train_args(eval_only=True)
    ),
    "train-flag-after-overrides": Case(
        "train_net",
        lambda ctx: "--resume comes after the KEY VALUE overrides",
        train_args("--resume"),
    ),
    "train-no-config-file": Case(
        "train_net",
        lambda ctx: "no --config-file given",
        lambda ctx: ["UWM.DATA_ROOT", str(ctx.root), "OUTPUT_DIR", str(ctx.tmp / "train")],
    ),
    "train-weights-cannot-be-fetched": Case(
        "train_net",
        lambda ctx: "cannot fetch MODEL.WEIGHTS 'https://weights.invalid/model_final.pkl'",
        train_args("MODEL.WEIGHTS", "https://weights.invalid/model_final.pkl"),
    ),
    "train-eval-only-checkpoint-4-classes": Case(
        "train_net",
        coco_built(checkpoint("model_4_classes.pth")),
        train_args(
            "UWM.COCO_DIR", "{tmp}/coco", "MODEL.WEIGHTS", "{model_4_classes}", eval_only=True
        ),
        uses_checkpoints=True,
    ),
    # evaluate, by reading: files MLE-bench's grader refuses, flags that do not go together.
    "eval-mlebench-overlapping-runs": Case(
        "evaluate", overlapping_runs, eval_reading_args("mlebench")
    ),
    "eval-all-overlapping-runs": Case("evaluate", overlapping_runs, eval_reading_args("all")),
    "eval-answers-overlapping-runs": Case(
        "evaluate", with_answers(overlapping_runs), answers_args("--reading", "mlebench")
    ),
    "eval-mlebench-unsorted-runs": Case("evaluate", unsorted_runs, eval_reading_args("mlebench")),
    "eval-mlebench-rows-out-of-order": Case(
        "evaluate", swapped_rows, eval_reading_args("mlebench")
    ),
    "eval-answers-with-project-reading": Case(
        "evaluate",
        with_answers(says("--reading project needs the scans' geometry from a data root")),
        answers_args("--reading", "project"),
    ),
    "eval-answers-with-all-reading": Case(
        "evaluate",
        with_answers(says("--reading all needs the scans' geometry")),
        answers_args("--reading", "all"),
    ),
    "eval-answers-and-data-root": Case(
        "evaluate",
        with_answers(says("--answers replaces --data-root and --truth")),
        lambda ctx: [*answers_args()(ctx), "--data-root", str(ctx.root)],
    ),
    "eval-no-truth": Case(
        "evaluate",
        says("missing --truth"),
        lambda ctx: [
            *["--data-root", str(ctx.root), "--pred", str(ctx.root / "sample_submission.csv")],
            *["--json", str(ctx.tmp / "scores.json")],
        ],
    ),
    "eval-volumes-under-a-file": Case("evaluate", a_file, volumes_args),
    # export_nifti: the label CSV against the scans, the case-day, the output folder.
    "export-ids-without-scans": Case(
        "export_nifti", ids_without_scans, export_args(labels="labels.csv")
    ),
    "export-unknown-case-day": Case(
        "export_nifti",
        says("case999_day1"),
        export_args("data/test_truth.csv", "out", "--case-day", "case999_day1"),
    ),
    "export-out-under-a-file": Case("export_nifti", a_file, export_args(out="a_file/out")),
    # predict_nifti: the input volume and the output folder, checked before the model loads.
    "predict-4d-volume": Case("predict_nifti", nifti_series, predict_args()),
    "predict-renamed-png": Case("predict_nifti", renamed_png, predict_args()),
    "predict-out-under-a-file": Case(
        "predict_nifti", nifti_and_a_file, predict_args(out="a_file/out")
    ),
    # cross_validate: --folds, the config, --init-from, all before a COCO build or a fold.
    "cv-fold-out-of-range": Case(
        "cross_validate", says("fold 5 is out of range"), cv_args("--folds", "5")
    ),
    "cv-unknown-config-key": Case("cross_validate", config_key, cv_args(opts=("FOO.BAR", "1"))),
    "cv-init-from-not-a-cv": Case(
        "cross_validate", says("is not a cross-validation folder"), cv_args("--init-from", "{tmp}")
    ),
    # choose_ensemble: the cross-validation folders.
    "ensemble-not-a-cv": Case(
        "choose_ensemble", says("is not a finished cross-validation"), choose_args("nothing_here")
    ),
    # export_model: the config, the checkpoint, the output folder.
    "export-model-unknown-config-key": Case(
        "export_model", config_key, export_model_args(opts=("FOO.BAR", "1"))
    ),
    "export-model-missing-checkpoint": Case(
        "export_model", says("missing.pth"), export_model_args(weights="{tmp}/missing.pth")
    ),
    "export-model-out-under-a-file": Case(
        "export_model", a_file, export_model_args(out="a_file/export")
    ),
}

#: Files a run may leave in OUTPUT_DIR when it fails: none, since train_net checks everything it
#: can (the checkpoint to evaluate included) before detectron2's setup writes config and log.
ALLOWED_AFTER_SETUP: set[str] = set()
_TORCH_TOOLS = ("train_net", "infer_submit", "cross_validate", "export_model")
#: Tools whose detectron2 log goes to stdout (setup_logger's default) once their model is built.
_LOGS_TO_STDOUT = ("infer_submit",)


def _snapshot(folder: Path) -> dict[str, tuple]:
    """Every entry under ``folder``: files with size and time, folders with their time (a folder's
    time changes when an entry, a temp file too, is made in it or removed from it)."""
    listing = {}
    for path in folder.rglob("*"):
        relative = path.relative_to(folder).as_posix()
        stat = path.stat()
        if path.is_dir():
            listing[relative] = ("dir", stat.st_mtime_ns)
        else:
            listing[relative] = ("file", stat.st_size, stat.st_mtime_ns)
    return listing


@dataclass(frozen=True)
class Outcome:
    culprit: str
    result: subprocess.CompletedProcess
    added: list[str]
    changed: list[str]
    seconds: float


def _run(case: Case, ctx: Ctx, build: CheckpointBuild | None) -> Outcome:
    if case.waits_for_checkpoints:
        assert build is not None
        ctx = Ctx(ctx.root, ctx.tmp, build.wait())
    culprit = case.breaks(ctx)
    before = _snapshot(ctx.tmp)
    start = time.perf_counter()
    result = run_tool(case.tool, case.args(ctx), timeout=300)
    seconds = time.perf_counter() - start
    after = _snapshot(ctx.tmp)
    added = sorted(set(after) - set(before) - ALLOWED_AFTER_SETUP)
    changed = sorted(name for name in before if after.get(name) != before[name])
    return Outcome(culprit, result, added, changed, seconds)


@pytest.fixture(scope="module")
def outcomes(
    request: pytest.FixtureRequest,
    phantom_root: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, Outcome]:
    """Run every row this session selected at once, slow (torch) tools first; see the module
    docstring. The checkpoint is built only when a selected row needs it."""
    selected = {
        item.callspec.params["name"]
        for item in request.session.items
        if item.originalname == "test_bad_input_gives_one_line_and_writes_nothing"
    }
    order = sorted(
        (name for name in CASES if CASES[name].run and name in selected),
        key=lambda name: CASES[name].tool not in _TORCH_TOOLS,
    )
    needs_checkpoints = any(CASES[name].waits_for_checkpoints for name in order)
    instant_checkpoints = (
        request.getfixturevalue("instant_checkpoints") if needs_checkpoints else None
    )
    jobs = {}
    for name in order:
        tmp = tmp_path_factory.mktemp(name)
        shutil.copytree(phantom_root, tmp / "data")
        jobs[name] = Ctx(tmp / "data", tmp, {})
    with ThreadPoolExecutor(max_workers=(os.cpu_count() or 2) + 1) as pool:
        futures = {
            name: pool.submit(_run, CASES[name], jobs[name], instant_checkpoints) for name in order
        }
        return {name: future.result() for name, future in futures.items()}


def test_the_table_covers_every_tool_and_enough_cases() -> None:
    tools = {case.tool for case in CASES.values()}
    assert tools == {path.stem for path in (REPO_ROOT / "tools").glob("*.py")}
    assert len(CASES) >= 70


def _marks(case: Case) -> list[pytest.MarkDecorator]:
    """A known bug is a strict xfail; a row whose tool loads torch and detectron2 is slow."""
    marks = [pytest.mark.xfail(reason=case.xfail, strict=True)] if case.xfail else []
    return marks + ([pytest.mark.slow] if case.tool in _TORCH_TOOLS else [])


@pytest.mark.parametrize(
    "name", [pytest.param(name, marks=_marks(case)) for name, case in CASES.items()]
)
def test_bad_input_gives_one_line_and_writes_nothing(
    name: str, outcomes: dict[str, Outcome]
) -> None:
    outcome = outcomes[name]
    result = outcome.result
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].strip(), result.stderr
    assert lines[0].startswith("error: ")
    assert outcome.culprit in lines[0]
    if CASES[name].tool not in _LOGS_TO_STDOUT:
        assert result.stdout == ""
    assert outcome.added == [], f"written: {outcome.added}"
    assert outcome.changed == [], f"modified: {outcome.changed}"
