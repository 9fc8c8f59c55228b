"""Pictures: overlays put the right colours in the right places; files are real PNG/GIF images."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from uwm_d2.visualization import (
    CLASS_COLORS,
    choose_slices,
    label_frame,
    legend_entry_width,
    legend_layout,
    outline_width,
    overlay,
    plot_training_curves,
    save_gif,
    training_curves_figure,
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


def test_prediction_outlines_are_thick_enough_to_see_in_a_montage():
    scan = np.full((266, 266), 1000, dtype=np.uint16)
    scan[0, 0] = 3000
    prediction = np.zeros((3, 266, 266), dtype=bool)
    prediction[1, 100:160, 100:160] = True
    image = overlay(scan, None, prediction)
    colour = np.all(image == CLASS_COLORS["small_bowel"], axis=2)
    # Across the left edge of the square, the outline is several pixels wide, not one.
    assert colour[130, 95:106].sum() >= outline_width(scan.shape) >= 2
    assert outline_width((360, 310)) >= outline_width((234, 234))


def test_the_gif_legend_fits_every_scan_width():
    for width in (120, 234, 266, 310, 360):
        layout = legend_layout(width)
        placed = [name for row in layout for _, name in row]
        assert placed == ["large_bowel", "small_bowel", "stomach"]  # every organ, once
        for row in layout:
            for x, name in row:
                assert x + legend_entry_width(name) <= width, (width, name)
        frame = label_frame(np.zeros((width, width, 3), dtype=np.uint8), "case1_day0  slice 7")
        assert frame.shape == (width + 18 * (1 + len(layout)), width, 3)
    assert len(legend_layout(120)) > 1  # a narrow frame wraps instead of cutting a name off


def test_the_score_panel_says_which_reading_it_plots(tmp_path):
    metrics = tmp_path / "metrics.json"
    rows = [
        {"iteration": 9, "total_loss": 2.0, "uwm/score": 0.4, "uwm/competition/score": 0.2},
        {"iteration": 19, "total_loss": 1.0, "uwm/score": 0.6, "uwm/competition/score": 0.3},
    ]
    metrics.write_text("\n".join(json.dumps(row) for row in rows))
    figure = training_curves_figure(metrics)
    score_axis = figure.axes[2]
    assert "this project's reading" in score_axis.get_title()
    assert "competition metric" not in score_axis.get_title()
    labels = score_axis.get_legend_handles_labels()[1]
    assert "score (higher is better)" in labels and "score, competition reading" in labels


def test_an_unknown_case_day_error_lists_the_case_days_there(phantom_root, tmp_path):
    import pytest

    from uwm_d2.core.errors import UWMInputError
    from uwm_d2.core.layout import index_scans
    from uwm_d2.visualization import render_case_day

    known = sorted(set(index_scans(phantom_root, "test")["case_day"]))
    with pytest.raises(UWMInputError) as raised:
        render_case_day(phantom_root, "case999_day0", tmp_path / "pictures", split="test")
    message = str(raised.value)
    assert "'case999_day0'" in message and f"its case-days: {', '.join(known)}" in message
    assert not (tmp_path / "pictures").exists()
