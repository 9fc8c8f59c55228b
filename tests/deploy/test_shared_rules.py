"""The rules both predictors share are one implementation, and match what detectron2 did before.

The exported-model predictor has no torch, so the rules it needs live in torch-free modules that
the PyTorch path calls too. These tests pin each to the detectron2 behaviour it replaced and check
that the torch-free modules stay torch-free.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.data.transforms import ResizeShortestEdge
from detectron2.layers.mask_ops import paste_masks_in_image
from detectron2.modeling.postprocessing import sem_seg_postprocess
from detectron2.structures import Boxes, ImageList

from uwm_d2.config import build_cfg
from uwm_d2.core.layout_reader import index_scans
from uwm_d2.data.inputs import build_model_input, resize_to_test_size, resized_shape
from uwm_d2.data.mapper import UWMDatasetMapper
from uwm_d2.deploy.export_format import InputRule
from uwm_d2.deploy.predictor import normalized_batch
from uwm_d2.inference import soft_maps
from uwm_d2.inference.volume import scan_records
from uwm_d2.modeling.postprocess import paste_soft_masks

from .conftest import REPO_ROOT, SEMANTIC

TORCH_FREE = (
    "uwm_d2.deploy",
    "uwm_d2.data.inputs",
    "uwm_d2.inference.soft_maps",
    "uwm_d2.inference.volume",
    "uwm_d2.inference.pipeline",
    "uwm_d2.inference.nifti",
)


def test_the_deploy_side_modules_import_no_torch_nor_detectron2() -> None:
    code = (
        "import importlib, sys\n"
        f"for name in {TORCH_FREE!r}: importlib.import_module(name)\n"
        "print(sorted({n.split('.')[0] for n in sys.modules}\n"
        "             & {'torch', 'torchvision', 'detectron2', 'onnx'}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_resized_shape_is_detectron2s_resize_shortest_edge() -> None:
    heights = (1, 150, 234, 266, 310, 360, 640)
    for height, width, short, longest in itertools.product(
        heights, heights, (64, 128, 256, 384, 800), (96, 224, 384, 1333, 10**9)
    ):
        expected = ResizeShortestEdge.get_output_shape(height, width, short, longest)
        assert resized_shape(height, width, short, longest) == expected, (height, width)


@pytest.mark.parametrize("min_size", [0, 128, 384])
def test_the_test_mapper_image_is_resize_to_test_size_of_the_model_input(
    phantom_root: Path, min_size: int
) -> None:
    cfg = build_cfg(REPO_ROOT / SEMANTIC, ["INPUT.MIN_SIZE_TEST", str(min_size)])
    mapper = UWMDatasetMapper(cfg, is_train=False)
    records = next(iter(scan_records(phantom_root, index_scans(phantom_root, "test")).values()))
    record = {**records[3], "neighbor_files": [r["file_name"] for r in records[1:6:2]]}
    expected = mapper(dict(record))["image"].numpy()
    image = build_model_input(record["neighbor_files"])
    found = resize_to_test_size(image, min_size, cfg.INPUT.MAX_SIZE_TEST).transpose(2, 0, 1)
    np.testing.assert_array_equal(found, expected)


@pytest.mark.parametrize("size", [(96, 128), (310, 360)], ids=["down", "up"])
def test_semantic_probabilities_match_detectron2s_resize_then_sigmoid(
    size: tuple[int, int],
) -> None:
    # The rule moved from torch's bilinear interpolate to OpenCV's: same sampling (pixel
    # centres, no antialiasing); OpenCV's interpolation weights are rounded coarser
    # (measured: up to 6e-5 in probability on these logits).
    logits = torch.randn(3, 192, 224, generator=torch.Generator().manual_seed(0)) * 4
    expected = torch.sigmoid(sem_seg_postprocess(logits, (180, 200), *size)).numpy()
    found = soft_maps.semantic_probabilities(logits.numpy(), (180, 200), *size)
    assert found.shape == (3, *size) and found.dtype == np.float32
    np.testing.assert_allclose(found, expected, atol=1e-4)


def test_normalized_batch_is_the_models_own_input(phantom_root: Path) -> None:
    from detectron2.modeling import build_model

    cfg = build_cfg(REPO_ROOT / SEMANTIC, ["MODEL.DEVICE", "cpu"])
    model = build_model(cfg)
    images = [torch.rand(3, 100, 130) * 255, torch.rand(3, 90, 140) * 255]
    expected = ImageList.from_tensors(
        [(image - model.pixel_mean) / model.pixel_std for image in images],
        model.backbone.size_divisibility,
    )
    rule = InputRule((-2, 0, 2), 0.5, 99.5, 128, 224, tuple(cfg.MODEL.PIXEL_MEAN),
                     tuple(cfg.MODEL.PIXEL_STD), model.backbone.size_divisibility, 1.5)  # fmt: skip
    batch, sizes = normalized_batch([image.numpy() for image in images], rule)
    np.testing.assert_array_equal(batch, expected.tensor.numpy())
    assert sizes == [tuple(size) for size in expected.image_sizes]


def test_pasted_masks_match_detectron2s_paste_inside_the_boxes() -> None:
    """detectron2's CPU paste fills only each box's neighbourhood; ours pastes on the whole
    scan (one traceable pass); inside the neighbourhood they agree to its 1/255 steps."""
    generator = torch.Generator().manual_seed(1)
    masks = torch.rand(5, 1, 28, 28, generator=generator)
    boxes = torch.tensor(
        [[10, 12, 60, 50], [0, 0, 20, 30], [100, 80, 128, 96], [30, 30, 30, 40], [5, 5, 90, 70]],
        dtype=torch.float32,
    )
    keep, scaled, pasted = paste_soft_masks(boxes, masks, (96, 128), 310, 360)
    assert keep.tolist() == [0, 1, 2, 4]  # the zero-width box is dropped
    expected = paste_masks_in_image(masks[keep, 0], Boxes(scaled), (310, 360), threshold=-1.0)
    inside = expected > 0
    difference = (pasted[inside] - expected[inside].float() / 255).abs().max()
    assert float(difference) <= 1 / 255
    assert float(pasted[~inside].max()) < 0.5  # outside: the soft edge only, never a mask
