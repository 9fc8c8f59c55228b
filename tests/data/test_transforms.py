"""The augmentations detectron2 lacks: one affine warp, OpenCV resize, photometric changes."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("detectron2")

from detectron2.data import transforms as T

from uwm_d2.data.transforms import (
    AffineTransform,
    CV2ResizeTransform,
    PhotometricTransform,
    RandomAffine,
    RandomPhotometric,
    ResizeShortestEdgeCV2,
)


def test_affine_coords_agree_with_the_warped_mask() -> None:
    """Where apply_coords sends a pixel is where apply_segmentation puts it."""
    height, width = 31, 47
    np.random.seed(0)
    transform = RandomAffine(25.0, 0.1, prob=1.0).get_transform(np.zeros((height, width)))
    assert isinstance(transform, AffineTransform)
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[12:15, 20:23] = 1  # a 3x3 block centred on (x=21, y=13)
    warped = transform.apply_segmentation(mask)
    ys, xs = np.nonzero(warped)
    ((x, y),) = transform.apply_coords(np.array([[21.0, 13.0]]))
    assert abs(xs.mean() - x) < 0.75 and abs(ys.mean() - y) < 0.75
    assert warped.dtype == np.uint8 and set(np.unique(warped)) <= {0, 1}


@pytest.mark.parametrize("channels", [1, 3, 5])
def test_affine_keeps_shape_and_channels(channels: int) -> None:
    image = np.random.default_rng(0).random((20, 30, channels)).astype(np.float32)
    transform = AffineTransform(np.array([[1.0, 0.0, 2.0], [0.0, 1.0, -1.0]]), 20, 30)
    out = transform.apply_image(image)
    assert out.shape == image.shape and out.dtype == np.float32
    np.testing.assert_allclose(out[5:15, 5:25], image[6:16, 3:23], rtol=1e-6)  # a pure shift
    bool_mask = image[..., 0] > 0.5
    assert transform.apply_segmentation(bool_mask).dtype == np.bool_


def test_random_affine_no_op_when_disabled() -> None:
    image = np.zeros((10, 10))
    assert isinstance(RandomAffine(0.0, 0.0, 1.0).get_transform(image), T.NoOpTransform)
    assert isinstance(RandomAffine(10.0, 0.1, 0.0).get_transform(image), T.NoOpTransform)


def test_cv2_resize_draws_the_same_sizes_and_keeps_masks_aligned() -> None:
    image = np.zeros((31, 36, 3), dtype=np.float32)
    np.random.seed(3)
    ours = ResizeShortestEdgeCV2((50, 80), 1000, "range").get_transform(image)
    np.random.seed(3)
    theirs = T.ResizeShortestEdge((50, 80), 1000, "range").get_transform(image)
    assert isinstance(ours, CV2ResizeTransform)
    assert (ours.new_h, ours.new_w) == (theirs.new_h, theirs.new_w)
    mask = np.zeros((31, 36), dtype=np.uint8)
    mask[10:20, 5:15] = 1
    image[10:20, 5:15] = 255.0
    resized_mask = ours.apply_segmentation(mask)
    resized_image = ours.apply_image(image)
    assert resized_mask.shape == resized_image.shape[:2] == (ours.new_h, ours.new_w)
    assert (resized_image[..., 0][resized_mask == 1] > 127).mean() > 0.95
    assert (resized_mask[resized_image[..., 0] > 127] == 1).mean() > 0.95
    single = ours.apply_image(image[..., :1])
    assert single.shape == (ours.new_h, ours.new_w, 1)


def test_photometric_neutral_is_identity_and_output_stays_in_range() -> None:
    image = np.random.default_rng(0).random((8, 9, 3)).astype(np.float32) * 255
    np.testing.assert_allclose(PhotometricTransform(1.0, 1.0, 0.0).apply_image(image), image, 1e-5)
    strong = PhotometricTransform(0.5, 1.8, 0.3).apply_image(image)
    assert strong.dtype == np.float32 and strong.min() >= 0 and strong.max() <= 255
    gamma = PhotometricTransform(2.0, 1.0, 0.0).apply_image(image)
    np.testing.assert_allclose(gamma, 255 * (image / 255) ** 2, rtol=1e-4, atol=1e-3)
    mask = np.ones((8, 9), dtype=np.uint8)
    assert PhotometricTransform(0.5, 1.8, 0.3).apply_segmentation(mask) is mask


def test_random_photometric_same_change_on_every_channel() -> None:
    np.random.seed(0)
    image = np.tile(np.linspace(0, 255, 40, dtype=np.float32)[None, :, None], (5, 1, 4))
    transform = RandomPhotometric(0.1, 0.2, 0.3, prob=1.0).get_transform(image)
    out = transform.apply_image(image)
    for channel in range(1, 4):
        np.testing.assert_array_equal(out[..., channel], out[..., 0])
