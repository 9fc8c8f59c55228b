"""Augmentations detectron2 0.6 lacks, as ordinary ``Transform`` / ``Augmentation`` classes.

* :class:`AffineTransform` / :class:`RandomAffine`: a small rotation and shift in ONE warp of the
  image (bilinear) and the masks (nearest), keeping the image size. detectron2's
  ``RandomRotation`` has no shift, and two warps would blur the image twice.
* :class:`ResizeShortestEdgeCV2`: detectron2's ``ResizeShortestEdge`` resizing with OpenCV. For a
  float image detectron2 resizes through ``torch.nn.functional.interpolate`` (PIL only takes uint8),
  several times slower than ``cv2.resize`` on one data-loader core; the sizes drawn are the same.
* :class:`PhotometricTransform` / :class:`RandomPhotometric`: gamma, contrast and brightness on
  the float image in ``[0, 255]`` (the model range of :mod:`uwm_d2.data.inputs`), same change on
  every channel (they are neighbouring slices of one scan); masks are left alone.

Both plug into ``T.AugmentationList`` and ``detection_utils.transform_instance_annotations``, so
images and masks go through exactly the same geometric transforms.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
from detectron2.data import transforms as T

from uwm_d2.data.inputs import INPUT_SCALE, resize_image, resized_shape


def _warp(image: np.ndarray, matrix: np.ndarray, interpolation: int) -> np.ndarray:
    height, width = image.shape[:2]
    warped = cv2.warpAffine(
        image,
        matrix,
        (width, height),
        flags=interpolation,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0,
    )
    if image.ndim == 3 and warped.ndim == 2:  # OpenCV drops a trailing axis of size 1
        warped = warped[..., None]
    return warped


class AffineTransform(T.Transform):
    """Warp by the 2x3 ``matrix`` (input pixel coords → output coords), same output size.

    Pixels coming from outside the input are 0 (background / air in the model range).
    """

    def __init__(self, matrix: np.ndarray, height: int, width: int) -> None:
        super().__init__()
        self._set_attributes(
            {"matrix": np.asarray(matrix, dtype=np.float64), "height": height, "width": width}
        )

    def apply_image(self, img: np.ndarray, interp: int | None = None) -> np.ndarray:
        return _warp(img, self.matrix, cv2.INTER_LINEAR if interp is None else interp)

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        # Nearest neighbour keeps masks binary; bool is not an OpenCV type.
        dtype = segmentation.dtype
        mask = segmentation.astype(np.uint8) if dtype == np.bool_ else segmentation
        warped = _warp(mask, self.matrix, cv2.INTER_NEAREST)
        return warped.astype(dtype, copy=False)

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        coords = np.asarray(coords, dtype=np.float64)
        if coords.size == 0:
            return coords
        return coords @ self.matrix[:, :2].T + self.matrix[:, 2]

    def inverse(self) -> T.Transform:
        inverse = cv2.invertAffineTransform(self.matrix)
        return AffineTransform(inverse, self.height, self.width)


class RandomAffine(T.Augmentation):
    """With probability ``prob``: rotate by ``U(-max_angle, max_angle)`` degrees about the image
    centre and shift by ``U(-max_shift, max_shift)`` of the width / height."""

    def __init__(self, max_angle: float, max_shift: float, prob: float = 0.5) -> None:
        super().__init__()
        self._init(locals())

    def get_transform(self, image: np.ndarray) -> T.Transform:
        if (self.max_angle == 0 and self.max_shift == 0) or self._rand_range() >= self.prob:
            return T.NoOpTransform()
        height, width = image.shape[:2]
        angle = float(np.random.uniform(-self.max_angle, self.max_angle))
        shift_x = float(np.random.uniform(-self.max_shift, self.max_shift)) * width
        shift_y = float(np.random.uniform(-self.max_shift, self.max_shift)) * height
        # Pixel centres are at integer coordinates, so the image centre is ((w-1)/2, (h-1)/2).
        matrix = cv2.getRotationMatrix2D(((width - 1) / 2.0, (height - 1) / 2.0), angle, 1.0)
        matrix[:, 2] += (shift_x, shift_y)
        return AffineTransform(matrix, height, width)


class CV2ResizeTransform(T.ResizeTransform):
    """``ResizeTransform`` done by ``cv2.resize``: bilinear for images, exact nearest for masks.

    Both use pixel-centre sampling (``INTER_NEAREST_EXACT``, not OpenCV's shifted
    ``INTER_NEAREST``), so a mask stays aligned with its image.
    """

    def apply_image(self, img: np.ndarray, interp: int | None = None) -> np.ndarray:
        assert img.shape[:2] == (self.h, self.w), (img.shape, self.h, self.w)
        if interp is None or interp == cv2.INTER_LINEAR:
            # The one bilinear resize of model inputs (the exported-model predictor calls it too).
            return resize_image(img, (self.new_h, self.new_w))
        resized = cv2.resize(img, (self.new_w, self.new_h), interpolation=interp)
        if img.ndim == 3 and resized.ndim == 2:  # OpenCV drops a trailing axis of size 1
            resized = resized[..., None]
        return resized

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        dtype = segmentation.dtype
        mask = segmentation.astype(np.uint8) if dtype == np.bool_ else segmentation
        return self.apply_image(mask, interp=cv2.INTER_NEAREST_EXACT).astype(dtype, copy=False)


class ResizeShortestEdgeCV2(T.ResizeShortestEdge):
    """``T.ResizeShortestEdge`` (same arguments, same sizes drawn) resizing with OpenCV.

    The output size comes from :func:`uwm_d2.data.inputs.resized_shape`, the rule the
    exported-model predictor applies at test time too.
    """

    def get_transform(self, image: np.ndarray) -> T.Transform:
        height, width = image.shape[:2]
        # The same random draw as detectron2's ResizeShortestEdge (same generator, same calls).
        if self.is_range:
            size = np.random.randint(self.short_edge_length[0], self.short_edge_length[1] + 1)
        else:
            size = np.random.choice(self.short_edge_length)
        if size == 0:
            return T.NoOpTransform()
        new_height, new_width = resized_shape(height, width, int(size), self.max_size)
        return CV2ResizeTransform(height, width, new_height, new_width)


class PhotometricTransform(T.Transform):
    """``x/255 → (x/255)**gamma → (· - mean) * contrast + mean + brightness → clip → ·255``.

    Works on float images in ``[0, 255]``; segmentation and coordinates are unchanged.
    """

    def __init__(self, gamma: float, contrast: float, brightness: float) -> None:
        super().__init__()
        self._set_attributes(locals())

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        image = np.multiply(img, np.float32(1.0 / INPUT_SCALE), dtype=np.float32)
        if self.gamma != 1.0:
            # cv2.pow is several times faster than np.power; a 2D view takes any channel count.
            flat = cv2.pow(image.reshape(image.shape[0], -1), float(self.gamma))
            image = flat.reshape(image.shape)
        # Contrast around the mean, brightness and the way back to [0, 255] in one affine pass.
        mean = float(image.mean()) if self.contrast != 1.0 else 0.0
        scale = self.contrast * INPUT_SCALE
        offset = (mean * (1.0 - self.contrast) + self.brightness) * INPUT_SCALE
        image *= np.float32(scale)
        image += np.float32(offset)
        np.clip(image, 0.0, INPUT_SCALE, out=image)
        return image

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        return segmentation

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        return coords

    def inverse(self) -> T.Transform:
        return T.NoOpTransform()  # not invertible (clipping); geometry is unchanged


class RandomPhotometric(T.Augmentation):
    """With probability ``prob``: gamma ``exp(U(-g, g))``, contrast ``U(1-c, 1+c)``, brightness
    ``U(-b, b)`` (fraction of the range), one draw for all channels."""

    def __init__(self, brightness: float, contrast: float, gamma: float, prob: float = 0.5) -> None:
        super().__init__()
        self._init(locals())

    def get_transform(self, image: np.ndarray) -> T.Transform:
        if (self.brightness == 0 and self.contrast == 0 and self.gamma == 0) or (
            self._rand_range() >= self.prob
        ):
            return T.NoOpTransform()
        gamma = math.exp(float(np.random.uniform(-self.gamma, self.gamma)))
        contrast = float(np.random.uniform(1.0 - self.contrast, 1.0 + self.contrast))
        brightness = float(np.random.uniform(-self.brightness, self.brightness))
        return PhotometricTransform(gamma, contrast, brightness)
