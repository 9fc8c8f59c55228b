"""Config keys, the shipped configs, and one-line errors for bad keys or values."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("detectron2")

from detectron2.config import get_cfg

from uwm_d2.config import add_uwm_config, build_cfg
from uwm_d2.core.errors import UWMInputError

from .conftest import INSTANT_CONFIG, REPO_ROOT, tool_env

#: Every shipped config but Base-UWM.yaml, the kind-agnostic base of the others (no model alone).
CONFIGS = sorted(p for p in (REPO_ROOT / "configs").rglob("*.yaml") if p.name != "Base-UWM.yaml")
CPU = ["MODEL.DEVICE", "cpu"]


def test_add_uwm_config_defaults() -> None:
    cfg = get_cfg()
    add_uwm_config(cfg)
    assert cfg.UWM.SLICE_OFFSETS == (-2, 0, 2)
    assert cfg.UWM.EXCLUDE_BAD is True
    assert 0 <= cfg.UWM.EMPTY_SLICE_RATIO < 1
    assert len(cfg.UWM.EVAL.SCORE_THRESHOLDS) == 3
    for key in ("HFLIP_PROB", "ROTATION_DEG", "SHIFT_FRACTION", "BRIGHTNESS", "CONTRAST", "GAMMA"):
        assert key in cfg.UWM.AUG


def test_every_uwm_key_has_a_comment() -> None:
    """detectron2's convention: a one-line comment above every key of add_<project>_config."""
    lines = (REPO_ROOT / "uwm_d2" / "config.py").read_text().splitlines()
    keys = [i for i, line in enumerate(lines) if line.strip().startswith("_C.UWM.")]
    assert len(keys) > 20
    for i in keys:
        assert lines[i - 1].strip().startswith("#"), lines[i]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_build(path: Path) -> None:
    cfg = build_cfg(path, CPU)
    kind = cfg.MODEL.META_ARCHITECTURE
    assert kind in ("UWMRCNN", "UWMSemanticSegmentor", "UWMPanopticFPN")  # soft outputs
    if kind != "UWMSemanticSegmentor":
        assert cfg.MODEL.ROI_HEADS.NUM_CLASSES == 3
    if kind != "UWMRCNN":
        assert cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES == 3
        assert cfg.MODEL.SEM_SEG_HEAD.NAME == "MultiLabelSemSegHead"
    assert cfg.INPUT.MASK_FORMAT == "bitmask"
    assert cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS is False
    assert len(cfg.MODEL.PIXEL_MEAN) == len(cfg.UWM.SLICE_OFFSETS)
    # Self-contained: every _BASE_ stays inside this repository's configs/.
    text = path.read_text()
    for line in text.splitlines():
        if line.startswith("_BASE_"):
            base = (path.parent / line.split(":", 1)[1].strip().strip("\"'")).resolve()
            assert base.is_relative_to(REPO_ROOT / "configs") and base.is_file()


def test_scratch_configs_do_not_use_frozen_bn() -> None:
    for name in ("mask_rcnn_R_50_FPN_gn_scratch_uwm.yaml", "mask_rcnn_R_18_FPN_instant_test.yaml"):
        cfg = build_cfg(next(p for p in CONFIGS if p.name == name), CPU)
        assert cfg.MODEL.WEIGHTS == "" and cfg.MODEL.RESNETS.NORM in ("BN", "GN", "SyncBN")
        assert cfg.MODEL.BACKBONE.FREEZE_AT == 0


@pytest.mark.parametrize(
    ("opts", "match"),
    [
        (["UWM.NOPE", "1"], "UWM.NOPE"),
        (["UWM.FOLD", "abc"], "UWM.FOLD"),
        (["UWM.FOLD"], "odd length"),
        (["UWM.EMPTY_SLICE_RATIO", "1.0"], "UWM.EMPTY_SLICE_RATIO"),
        (["UWM.SLICE_OFFSETS", "(-1, 0, 1, 2)"], "MODEL.PIXEL_MEAN has 3 values"),
        (["UWM.EVAL.SCORE_THRESHOLDS", "(0.5,)"], "SCORE_THRESHOLDS needs 3 values"),
        (["UWM.INTENSITY_LOW_PERCENTILE", "99.9"], "INTENSITY_LOW_PERCENTILE"),
        (["MODEL.ROI_HEADS.NUM_CLASSES", "80"], "NUM_CLASSES must be 3"),
        (["UWM.EVAL.MASK_THRESHOLD", "0.0"], r"UWM\.EVAL\.MASK_THRESHOLD must be"),
        (["UWM.EVAL.MASK_THRESHOLDS", "(0.5, 0.5)"], r"UWM\.EVAL\.MASK_THRESHOLDS needs 1"),
        (["UWM.EVAL.Z_SMOOTHING", "(0.5, 2.0, 0.5)"], r"UWM\.EVAL\.Z_SMOOTHING must be"),
        (["UWM.EVAL.MIN_SLICES_3D", "(0,)"], r"UWM\.EVAL\.MIN_SLICES_3D must be an integer"),
        (["UWM.EVAL.KEEP_LARGEST_3D", "(1,)"], r"UWM\.EVAL\.KEEP_LARGEST_3D must be true"),
        (["UWM.EVAL.SEMANTIC_WEIGHT", "1.5"], r"UWM\.EVAL\.SEMANTIC_WEIGHT must be"),
    ],
)
def test_bad_overrides_are_one_line_errors(opts: list[str], match: str) -> None:
    with pytest.raises(UWMInputError, match=match) as error:
        build_cfg(INSTANT_CONFIG, opts)
    assert "\n" not in str(error.value)


def test_unknown_key_in_a_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(f'_BASE_: "{INSTANT_CONFIG}"\nUWM:\n  NOT_A_KEY: 3\n')
    with pytest.raises(UWMInputError, match=r"UWM\.NOT_A_KEY") as error:
        build_cfg(path)
    assert "\n" not in str(error.value)
    with pytest.raises(UWMInputError, match="does not exist"):
        build_cfg(tmp_path / "missing.yaml")


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the no-GPU message")
def test_cuda_without_a_gpu_is_one_line() -> None:
    with pytest.raises(UWMInputError, match=r"no CUDA GPU is available; add MODEL\.DEVICE cpu"):
        build_cfg(INSTANT_CONFIG, ["MODEL.DEVICE", "cuda"])


def test_train_net_prints_one_line_for_an_unknown_key(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "tools" / "train_net.py"),
            "--config-file",
            str(INSTANT_CONFIG),
            "OUTPUT_DIR",
            str(tmp_path / "out"),
            "UWM.NOT_A_KEY",
            "1",
        ],
        capture_output=True,
        text=True,
        env=tool_env(OMP_NUM_THREADS="1"),
        timeout=300,
    )
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "UWM.NOT_A_KEY" in errors[0]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()  # nothing written for a bad command line


def test_config_docs_are_current() -> None:
    """docs/config.md is generated from add_uwm_config: it must match the code."""
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "config_docs.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr


def test_the_merge_rule_keys_build_the_rule() -> None:
    from uwm_d2.core.merge import MergeRule

    cfg = build_cfg(
        INSTANT_CONFIG,
        ["UWM.EVAL.MASK_THRESHOLDS", "(0.4, 0.5, 0.45)", "UWM.EVAL.MIN_SLICES_3D", "(3,)"],
    )
    rule = MergeRule.from_cfg(cfg)
    assert rule.mask_threshold == (0.4, 0.5, 0.45) and rule.min_slices_3d == 3
    assert MergeRule.from_cfg(build_cfg(INSTANT_CONFIG)) == MergeRule()
