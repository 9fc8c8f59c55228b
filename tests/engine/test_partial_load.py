"""Starting one model kind from another's weights: one line says what was loaded and what starts
fresh (fvcore would list every missing key: hundreds of lines)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

pytest.importorskip("detectron2")

import torch
from detectron2.modeling import build_model

from uwm_d2.config import build_cfg
from uwm_d2.engine.checkpoint import DataOnlyCheckpointer

from ..conftest import REPO_ROOT

DEMO = REPO_ROOT / "configs" / "demo"


def test_the_demo_mask_rcnn_started_from_the_demo_semantic_model_says_so_in_one_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    semantic = build_model(
        build_cfg(DEMO / "semantic_R_18_FPN_cpu_demo.yaml", ["MODEL.DEVICE", "cpu"])
    )
    DataOnlyCheckpointer(semantic, str(tmp_path)).save("semantic")
    mask_rcnn = build_model(
        build_cfg(DEMO / "mask_rcnn_R_18_FPN_cpu_demo.yaml", ["MODEL.DEVICE", "cpu"])
    )
    caplog.set_level(logging.INFO)
    DataOnlyCheckpointer(mask_rcnn).load(str(tmp_path / "semantic.pth"))

    lines = [r.getMessage() for r in caplog.records if "from the checkpoint" in r.getMessage()]
    assert len(lines) == 1
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    backbone = sum(1 for key in mask_rcnn.state_dict() if key.startswith("backbone."))
    heads = sum(1 for key in mask_rcnn.state_dict() if key.startswith("roi_heads."))
    assert f"loaded from the checkpoint: backbone ({backbone} tensors)" in lines[0]
    assert "starting fresh: proposal_generator" in lines[0] and f"roi_heads ({heads}" in lines[0]
    assert "not used from the checkpoint: sem_seg_head" in lines[0]
    # And the backbone really holds the semantic model's weights.
    key = next(key for key in semantic.state_dict() if key.startswith("backbone.bottom_up"))
    assert torch.equal(mask_rcnn.state_dict()[key], semantic.state_dict()[key])
