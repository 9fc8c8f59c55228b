"""Packed instance masks: RLE decoding, boxes, unions, unpacking, against plain per-mask code."""

from __future__ import annotations

import numpy as np
import pytest
from pycocotools import mask as mask_util

from uwm_d2.data import packed_masks as pm

# pycocotools (the reference decoder here) has not caught up with numpy 2's __array__ protocol.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def _encode(mask: np.ndarray, as_text: bool = True) -> dict:
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    counts = rle["counts"].decode("ascii") if as_text else rle["counts"]
    return {"size": [int(s) for s in rle["size"]], "counts": counts}


def _uncompressed(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE: run lengths of the column-major pixels, starting with zeros."""
    flat = mask.astype(np.uint8).ravel(order="F")
    changes = np.flatnonzero(np.diff(flat)) + 1
    edges = np.concatenate(([0], changes, [flat.size]))
    counts = np.diff(edges).tolist()
    if flat.size and flat[0]:
        counts = [0, *counts]
    return {"size": list(mask.shape), "counts": counts}


def _boxes(masks: np.ndarray) -> np.ndarray:
    """Reference boxes, as detectron2's BitMasks.get_bounding_boxes defines them."""
    boxes = np.zeros((len(masks), 4), dtype=np.float32)
    for index, mask in enumerate(masks):
        ys, xs = np.nonzero(mask)
        if len(xs):
            boxes[index] = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    return boxes


def _random_masks(rng: np.random.Generator, count: int, height: int, width: int) -> np.ndarray:
    """Overlapping blobs and noise, with an empty and a full mask among them."""
    yy, xx = np.mgrid[:height, :width]
    masks = np.zeros((count, height, width), dtype=bool)
    for index in range(count):
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        ry, rx = rng.uniform(0.5, max(1.0, height / 2)), rng.uniform(0.5, max(1.0, width / 2))
        masks[index] = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        if index % 4 == 3:
            masks[index] ^= rng.random((height, width)) < 0.1
    if count > 2:
        masks[1] = False
        masks[2] = True
    return masks


@pytest.mark.parametrize("count", [0, 1, 7, 8, 9, 23, 40])
@pytest.mark.parametrize(("height", "width"), [(31, 36), (36, 31), (1, 5), (64, 64)])
def test_decode_equals_pycocotools(count: int, height: int, width: int) -> None:
    rng = np.random.default_rng(count * 1000 + height * 10 + width)
    masks = _random_masks(rng, count, height, width)
    rles = [_encode(mask, as_text=index % 2 == 0) for index, mask in enumerate(masks)]
    if count > 4:
        rles[4] = _uncompressed(masks[4])  # plain run lengths are accepted too
    planes = pm.decode_packed(rles, height, width)
    assert planes.shape == (pm.num_planes(count), height, width) and planes.dtype == np.uint8
    assert np.array_equal(planes, pm.pack(masks))
    if count:
        decoded = mask_util.decode([_encode(mask) for mask in masks])  # (H, W, N)
        unpacked = pm.unpack(planes, range(count))
        assert np.array_equal(unpacked, np.moveaxis(decoded, 2, 0))


def test_boxes_emptiness_and_unions() -> None:
    rng = np.random.default_rng(5)
    masks = _random_masks(rng, 19, 40, 52)
    planes = pm.pack(masks)
    boxes, nonempty = pm.bounding_boxes(planes, len(masks))
    assert boxes.dtype == np.float32
    np.testing.assert_array_equal(boxes, _boxes(masks))
    np.testing.assert_array_equal(nonempty, masks.reshape(len(masks), -1).any(axis=1))
    for chosen in ([], [0], [1], [3, 11, 17], list(range(19))):
        expected = masks[chosen].any(axis=0) if chosen else np.zeros((40, 52), bool)
        np.testing.assert_array_equal(pm.union(planes, chosen), expected)
        within = pm.union(planes, chosen, boxes=boxes[chosen])  # only their box looked at
        np.testing.assert_array_equal(within, expected)
    kept = np.flatnonzero(nonempty)
    out = np.full((len(kept), 40, 52), 7, dtype=np.uint8)  # garbage must be overwritten
    pm.unpack(planes, kept, out=out, boxes=boxes[kept])
    np.testing.assert_array_equal(out, masks[kept])


def test_unpack_writes_into_a_bool_buffer_view() -> None:
    masks = _random_masks(np.random.default_rng(1), 10, 20, 30)
    out = np.empty((10, 20, 30), dtype=bool)
    pm.unpack(pm.pack(masks), range(10), out=out.view(np.uint8))
    np.testing.assert_array_equal(out, masks)


def test_decoding_rejects_rles_that_do_not_fit() -> None:
    mask = np.zeros((10, 12), dtype=bool)
    mask[2:5, 3:9] = True
    with pytest.raises(ValueError, match=r"size \[10, 12\].*\[12, 10\]"):
        pm.decode_packed([_encode(mask)], 12, 10)
    short = {"size": [10, 12], "counts": [5, 10]}
    with pytest.raises(ValueError, match="covers 15 pixels, the image has 120"):
        pm.decode_packed([short], 10, 12)
    cut = _encode(mask)
    cut["counts"] = cut["counts"] + "_"  # "_" (95 - 48 = 47) has the continuation bit
    with pytest.raises(ValueError, match="middle of a count"):
        pm.decode_packed([cut], 10, 12)
