"""Pictures people would rather look at than read: mask overlays, slice montages, GIFs, curves.

No torch here: overlays take numpy masks (truth decoded from a CSV, predictions from a submission),
so the same pictures serve the phantom demo, a validation fold or a Kaggle submission.
Truth is drawn as a translucent fill, predictions as outlines, one colour per organ.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from uwm_d2.core.atomic import atomic_path
from uwm_d2.core.ids import CLASSES
from uwm_d2.core.io import normalize_intensity
from uwm_d2.core.layout_reader import decode_row, read_label_csv, read_prediction_csv
from uwm_d2.core.training_log import metrics_by_iteration

#: One RGB colour per organ, in CLASSES order; chosen to stay distinct for colour-blind readers.
CLASS_COLORS: dict[str, tuple[int, int, int]] = {
    "large_bowel": (230, 159, 0),  # orange
    "small_bowel": (86, 180, 233),  # sky blue
    "stomach": (204, 121, 167),  # reddish purple
}
_TRUTH_ALPHA = 0.45


def _matplotlib():
    """Import pyplot with a file-only backend (no screen on servers and CI)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def outline_width(shape: Sequence[int]) -> int:
    """Outline thickness in pixels for a scan of ``shape``: a montage panel shows a 234-360 px
    scan at about 300 px, where a 1 px line fades; about 1 px per 130 px of scan, at least 2."""
    return max(2, round(max(shape[:2]) / 130))


def overlay(
    scan: np.ndarray, truth: np.ndarray | None = None, prediction: np.ndarray | None = None
) -> np.ndarray:
    """Draw masks on a scan.

    Args:
        scan: ``(H, W)`` 16-bit scan; shown with the project's percentile window.
        truth: ``(3, H, W)`` masks drawn as translucent fills, or ``None``.
        prediction: ``(3, H, W)`` masks drawn as outlines (:func:`outline_width` thick), or
            ``None``.

    Returns:
        ``(H, W, 3)`` uint8 RGB image.
    """
    gray = (normalize_intensity(scan) * 255).astype(np.uint8)
    canvas = np.repeat(gray[:, :, None], 3, axis=2).astype(np.float32)
    for class_index, class_name in enumerate(CLASSES):
        color = np.array(CLASS_COLORS[class_name], dtype=np.float32)
        if truth is not None and truth[class_index].any():
            region = truth[class_index].astype(bool)
            canvas[region] = (1 - _TRUTH_ALPHA) * canvas[region] + _TRUTH_ALPHA * color
    image = np.clip(canvas, 0, 255).astype(np.uint8)
    if prediction is not None:
        for class_index, class_name in enumerate(CLASSES):
            mask = prediction[class_index].astype(np.uint8)
            if mask.any():
                contours, _ = cv2.findContours(mask, cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
                width = outline_width(scan.shape)
                cv2.drawContours(image, contours, -1, CLASS_COLORS[class_name], width)
    return image


def choose_slices(masks: np.ndarray | None, depth: int, count: int) -> list[int]:
    """Pick ``count`` slice indices of a ``(D, 3, H, W)`` stack, spread over the organs' z range."""
    if masks is not None and masks.any():
        present = np.flatnonzero(masks.reshape(depth, -1).any(axis=1))
        low, high = int(present[0]), int(present[-1])
    else:
        low, high = 0, depth - 1
    return sorted({round(float(z)) for z in np.linspace(low, high, num=min(count, depth))})


def save_montage(
    images: Sequence[np.ndarray],
    titles: Sequence[str],
    path: str | os.PathLike,
    title: str = "",
    columns: int = 4,
) -> Path:
    """Save overlay images in a grid with an organ legend (truth = fill, prediction = outline)."""
    plt = _matplotlib()
    from matplotlib.patches import Patch

    rows = max(1, -(-len(images) // columns))
    figure, axes = plt.subplots(
        rows, columns, figsize=(3 * columns, 3.2 * rows + 0.8), squeeze=False, layout="constrained"
    )
    for axis in axes.ravel():
        axis.axis("off")
    for axis, image, label in zip(axes.ravel(), images, titles, strict=False):
        axis.imshow(image)
        axis.set_title(label, fontsize=9)
    handles = [
        Patch(color=np.array(CLASS_COLORS[name]) / 255, label=name.replace("_", " "))
        for name in CLASSES
    ]
    figure.legend(handles=handles, loc="outside lower center", ncol=len(CLASSES), frameon=False)
    figure.suptitle(title + "   (fill = truth, outline = prediction)", fontsize=10)
    with atomic_path(path) as tmp_path:
        figure.savefig(tmp_path, format="png", dpi=100)
    plt.close(figure)
    return Path(path)


def label_frame(image: np.ndarray, text: str, legend: bool = True) -> np.ndarray:
    """``image`` with a caption bar on top (``text``) and, if ``legend``, the organ colours below.

    For GIF frames, which have no room for matplotlib's titles and legends: drawn with OpenCV at
    a size that stays legible on 234-360 px scans.
    """
    width = image.shape[1]
    bar = 18
    rows = [np.full((bar, width, 3), 32, dtype=np.uint8), image]
    cv2.putText(rows[0], text, (4, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1)
    if legend:
        for line in legend_layout(width):
            key = np.full((bar, width, 3), 32, dtype=np.uint8)
            for x, name in line:
                cv2.rectangle(key, (x, 5), (x + _SWATCH, 13), CLASS_COLORS[name], -1)
                cv2.putText(
                    key,
                    name.replace("_", " "),
                    (x + _SWATCH + 3, 13),
                    cv2.FONT_HERSHEY_SIMPLEX,
                    _LEGEND_SCALE,
                    (230, 230, 230),
                    1,
                )
            rows.append(key)
    return np.concatenate(rows, axis=0)


_SWATCH = 8
_LEGEND_SCALE = 0.35


def legend_entry_width(name: str) -> int:
    """Pixels one GIF legend entry takes: swatch, gap, label as OpenCV draws it."""
    (text_width, _), _ = cv2.getTextSize(
        name.replace("_", " "), cv2.FONT_HERSHEY_SIMPLEX, _LEGEND_SCALE, 1
    )
    return _SWATCH + 3 + text_width


def legend_layout(width: int, margin: int = 4, gap: int = 10) -> list[list[tuple[int, str]]]:
    """The GIF legend's entries as rows of ``(x, class name)`` that fit in ``width`` pixels.

    Entries are measured with OpenCV's own text metrics and wrap onto another row rather than
    run off the frame (a guess of 7 px per letter cut "stomach" off at 234-266 px).
    """
    rows: list[list[tuple[int, str]]] = [[]]
    x = margin
    for name in CLASSES:
        entry = legend_entry_width(name)
        if rows[-1] and x + entry > width - margin:
            rows.append([])
            x = margin
        rows[-1].append((x, name))
        x += entry + gap
    return rows


def save_gif(frames: Sequence[np.ndarray], path: str | os.PathLike, fps: int = 8) -> Path:
    """Save RGB frames as an animated GIF (a walk through z)."""
    from PIL import Image

    pictures = [Image.fromarray(frame) for frame in frames]
    with atomic_path(path) as tmp_path:
        pictures[0].save(
            tmp_path,
            format="GIF",
            save_all=True,
            append_images=pictures[1:],
            duration=int(1000 / fps),
            loop=0,
        )
    return Path(path)


def _series(rows: Sequence[dict], key: str) -> tuple[list[int], list[float]]:
    points = [(row["iteration"], float(row[key])) for row in rows if key in row]
    return [p[0] for p in points], [p[1] for p in points]


#: The score panel plots ``uwm/*``: this project's reading of the metric (the other readings,
#: when logged, as dashed lines named in the legend).
SCORE_PANEL_TITLE = "validation: this project's reading of the metric (uwm/score)"


def plot_training_curves(metrics_path: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Save :func:`training_curves_figure` of a ``metrics.json`` as a PNG."""
    plt = _matplotlib()
    figure = training_curves_figure(metrics_path)
    with atomic_path(path) as tmp_path:
        figure.savefig(tmp_path, format="png", dpi=100)
    plt.close(figure)
    return Path(path)


def training_curves_figure(metrics_path: str | os.PathLike) -> Any:
    """Three panels against the iteration, each with its legend outside the data.

    1. the training losses (one line each, log scale: they span decades);
    2. training vs validation loss, in matching colours (solid = training, dashed = validation),
       total and per loss term where both exist;
    3. the validation score, Dice and Hausdorff term (higher is better for the first two, lower
       for the Hausdorff term: marked in its label).
    """
    plt = _matplotlib()
    rows = metrics_by_iteration(metrics_path)
    figure, axes = plt.subplots(1, 3, figsize=(16, 4.6), layout="constrained")
    loss_axis, pair_axis, score_axis = axes

    loss_keys = sorted(
        {key for row in rows for key in row if "loss" in key and not key.startswith("validation")}
    )
    for key in loss_keys:
        iterations, values = _series(rows, key)
        if iterations:
            width = 2.0 if key == "total_loss" else 1.0
            marker = "o" if len(iterations) < 3 else None  # a line needs two points to show
            loss_axis.plot(iterations, values, label=key, linewidth=width, marker=marker)
    if any(value > 0 for row in rows for key, value in row.items() if key in loss_keys):
        loss_axis.set_yscale("log")
    loss_axis.set_title("training losses")

    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    pairs = [("total_loss", "validation_loss")] + [
        (key, f"validation/{key}")
        for key in loss_keys
        if key != "total_loss" and any(f"validation/{key}" in row for row in rows)
    ]
    for index, (train_key, val_key) in enumerate(pairs):
        color = colors[index % len(colors)]
        label = "total" if train_key == "total_loss" else train_key
        for key, style, kind in ((train_key, "-", "training"), (val_key, "--", "validation")):
            iterations, values = _series(rows, key)
            if iterations:
                marker = "o" if kind == "validation" or len(iterations) < 3 else None
                pair_axis.plot(
                    iterations, values, style, color=color, marker=marker, label=f"{label} ({kind})"
                )
    pair_axis.set_title("training vs validation loss")

    for key, label in (
        ("uwm/score", "score (higher is better)"),
        ("uwm/dice", "Dice (higher is better)"),
        ("uwm/hausdorff", "Hausdorff term (lower is better)"),
        ("uwm/competition/score", "score, competition reading"),
        ("uwm/mlebench/score", "score, MLE-bench reading"),
    ):
        iterations, values = _series(rows, key)
        if iterations:
            style = "s:" if "hausdorff" in key else ("x--" if key.count("/") == 2 else "o-")
            score_axis.plot(iterations, values, style, label=label)
    score_axis.set_ylim(0, 1)
    score_axis.set_title(SCORE_PANEL_TITLE)

    for axis in axes:
        axis.set_xlabel("iteration")
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)
    return figure


def _masks_from_csv(
    csv_path: str | os.PathLike, scans, value_column: str
) -> np.ndarray:  # (D, 3, H, W)
    """Decode one case-day's rows of a label or submission CSV into a ``(D, 3, H, W)`` stack."""
    if value_column == "predicted":
        frame = read_prediction_csv(csv_path)
    else:
        frame = read_label_csv(csv_path, value_column)
    height, width = int(scans["height"].iloc[0]), int(scans["width"].iloc[0])
    position = {slice_id: index for index, slice_id in enumerate(scans["id"])}
    class_index = {name: index for index, name in enumerate(CLASSES)}
    masks = np.zeros((len(scans), len(CLASSES), height, width), dtype=bool)
    rows = frame[frame["id"].isin(position)]
    name = Path(csv_path).name
    for slice_id, class_name, rle in rows.itertuples(index=False):
        decoded = decode_row(rle, (height, width), name, slice_id, class_name)
        masks[position[slice_id], class_index[class_name]] = decoded.astype(bool)
    return masks


def render_case_day(
    data_root: str | os.PathLike,
    case_day: str | None,
    out_dir: str | os.PathLike,
    split: str = "train",
    truth_csv: str | os.PathLike | None = None,
    pred_csv: str | os.PathLike | None = None,
    num_slices: int = 8,
    gif: bool = False,
) -> list[Path]:
    """Write ``<case_day>_montage.png`` (and ``<case_day>.gif``) into ``out_dir``; without a
    ``case_day``, of the split's first one.

    Raises:
        UWMInputError: the case-day has no scans under ``data_root/split``; a CSV is malformed.
    """
    from uwm_d2.core.errors import UWMInputError
    from uwm_d2.core.io import read_scan
    from uwm_d2.core.layout_reader import index_scans

    root = Path(data_root)
    every_scan = index_scans(root, split)
    if case_day is None:  # the first of the split, in case then day order
        case_day = str(every_scan.sort_values(["case", "day"])["case_day"].iloc[0])
    scans = every_scan[every_scan["case_day"] == case_day].reset_index(drop=True)
    if scans.empty:
        known = sorted(set(every_scan["case_day"]))
        listed = ", ".join(known[:8]) + (f", ... ({len(known)} in all)" if len(known) > 8 else "")
        raise UWMInputError(
            f"no scans for case-day {case_day!r} under {str(root / split)!r} (its case-days: "
            f"{listed or 'none'})"
        )
    truth = _masks_from_csv(truth_csv, scans, "segmentation") if truth_csv else None
    prediction = _masks_from_csv(pred_csv, scans, "predicted") if pred_csv else None
    guide = truth if truth is not None else prediction
    chosen = choose_slices(guide, len(scans), num_slices)

    def frame(index: int) -> np.ndarray:
        scan = read_scan(root / scans["path"][index])
        return overlay(
            scan,
            None if truth is None else truth[index],
            None if prediction is None else prediction[index],
        )

    out = Path(out_dir)
    written = [
        save_montage(
            [frame(index) for index in chosen],
            [f"slice {int(scans['slice'][index])}" for index in chosen],
            out / f"{case_day}_montage.png",
            title=case_day,
        )
    ]
    if gif:
        frames = [
            label_frame(frame(index), f"{case_day}  slice {int(scans['slice'][index])}")
            for index in range(len(scans))
        ]
        written.append(save_gif(frames, out / f"{case_day}.gif"))
    return written
