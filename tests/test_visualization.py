"""Pictures: overlays put the right colours in the right places; files are real PNG/GIF images."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from uwm_d2.visualization import (
    CLASS_COLORS,
    choose_slices,
    overlay,
    plot_training_curves,
    save_gif,
)


def test_overlay_colours_truth_fill_and_prediction_outline():
    scan = np.full((20, 30), 1000, dtype=np.uint16)
    scan[0, 0] = 3000  # a spread of values so the window is not degenerate
    truth = np.zeros((3, 20, 30), dtype=bool)
    truth[2, 5:10, 5:10] = True  # stomach
    prediction = np.zeros((3, 20, 30), dtype=bool)
    prediction[0, 10:18, 15:25] = True  # large bowel
    image = overlay(scan, truth, prediction)
    assert image.shape == (20, 30, 3) and image.dtype == np.uint8
    inside, outside = image[7, 7].astype(int), image[2, 20].astype(int)
    assert inside[0] != inside[1]  # tinted by the stomach colour, no longer gray
    assert outside[0] == outside[1] == outside[2]
    assert tuple(image[10, 20]) == CLASS_COLORS["large_bowel"]  # outline on the top edge
    assert image[14, 20, 0] == image[14, 20, 1]  # interior of a predicted organ stays untinted


def test_choose_slices_spreads_over_the_organ_range():
    masks = np.zeros((40, 3, 4, 4), dtype=bool)
    masks[10:21, 1, 1, 1] = True
    chosen = choose_slices(masks, 40, 5)
    assert chosen[0] == 10 and chosen[-1] == 20 and len(chosen) == 5


def test_gif_and_training_curves_are_written(tmp_path):
    frames = [np.full((8, 8, 3), value, dtype=np.uint8) for value in (0, 128, 255)]
    gif = save_gif(frames, tmp_path / "walk.gif")
    with Image.open(gif) as picture:
        assert picture.n_frames == 3
    metrics = tmp_path / "metrics.json"
    rows = [
        {"iteration": 0, "total_loss": 3.0, "loss_mask": 0.7},
        {"iteration": 9, "total_loss": 2.0, "loss_mask": 0.5, "uwm/score": 0.4},
        {"iteration": 19, "total_loss": 1.0, "validation_loss": 1.2, "uwm/score": 0.6},
    ]
    # A run killed mid-write leaves a cut-off last line: the one reader skips it.
    metrics.write_text("\n".join(json.dumps(row) for row in rows) + '\n{"iteration": 20, "tot')
    png = plot_training_curves(metrics, tmp_path / "curves.png")
    with Image.open(png) as picture:
        assert picture.format == "PNG" and picture.size[0] > 500
