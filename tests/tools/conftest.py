"""Fixtures of the tool tests: running a tool as a subprocess, and an untrained checkpoint.

``instant_checkpoints`` builds the instant-test config's model (no training: error paths and
kill tests only need a checkpoint that loads) in a background subprocess, so the torch start-up it
costs overlaps with whatever the test does meanwhile; ``.wait()`` returns the paths.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
INSTANT_CONFIG = "configs/quick_schedules/mask_rcnn_R_18_FPN_instant_test.yaml"

#: Small, fast inference for the tool tests: tiny input, and a score cut that no untrained box
#: reaches, so the mask head has nothing to do.
FAST_INFERENCE_OPTS = [
    "MODEL.DEVICE",
    "cpu",
    "INPUT.MIN_SIZE_TEST",
    "64",
    "INPUT.MAX_SIZE_TEST",
    "96",
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST",
    "0.99",
]

_BUILD_CHECKPOINTS = """
import sys
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model
from uwm_d2.config import build_cfg

out = sys.argv[1]
cfg = build_cfg(sys.argv[2], ["MODEL.DEVICE", "cpu"])
DetectionCheckpointer(build_model(cfg), save_dir=out).save("model_final")
# The same architecture for 4 classes: what another project's checkpoint looks like. validate_cfg
# (rightly) refuses NUM_CLASSES != 3, so the model is built from an edited copy of the config.
other = cfg.clone()
other.defrost()
other.MODEL.ROI_HEADS.NUM_CLASSES = 4
torch.save({"model": build_model(other).state_dict()}, f"{out}/model_4_classes.pth")
"""


def tool_env() -> dict[str, str]:
    """The environment a tool runs in: this checkout first on the path."""
    return {**os.environ, "PYTHONPATH": str(REPO_ROOT)}


def tool_command(tool: str, args: list[str]) -> list[str]:
    return [sys.executable, f"tools/{tool}.py", *args]


def run_tool(tool: str, args: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``tools/<tool>.py args`` to completion, capturing text output."""
    return subprocess.run(
        tool_command(tool, args),
        cwd=REPO_ROOT,
        env=tool_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@dataclass
class CheckpointBuild:
    """A checkpoint build running in the background; :meth:`wait` returns its files."""

    folder: Path
    process: subprocess.Popen
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stderr: str | None = None

    def wait(self) -> dict[str, Path]:
        """``{"model_final": 3-class checkpoint, "model_4_classes": 4-class state dict}``."""
        with self._lock:  # several threads may wait; communicate() must run once
            if self._stderr is None:
                self._stderr = self.process.communicate(timeout=300)[1]
        if self.process.returncode != 0:
            raise RuntimeError(f"building the test checkpoints failed:\n{self._stderr}")
        return {
            "model_final": self.folder / "model_final.pth",
            "model_4_classes": self.folder / "model_4_classes.pth",
        }


@pytest.fixture(scope="session")
def instant_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CheckpointBuild]:
    folder = tmp_path_factory.mktemp("checkpoints")
    process = subprocess.Popen(
        [sys.executable, "-c", _BUILD_CHECKPOINTS, str(folder), INSTANT_CONFIG],
        cwd=REPO_ROOT,
        env=tool_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    build = CheckpointBuild(folder, process)
    yield build
    if process.poll() is None:
        process.kill()
        process.wait()
