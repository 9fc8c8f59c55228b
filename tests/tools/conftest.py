"""Fixtures of the tool tests: an untrained checkpoint (running a tool: tests/conftest.py).

``instant_checkpoints`` builds the instant-test config's model (no training: error paths and
kill tests only need a checkpoint that loads) in a background subprocess, so the torch start-up it
costs overlaps with whatever the test does meanwhile; ``.wait()`` returns the paths.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ..conftest import INSTANT_CONFIG, REPO_ROOT, tool_env

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
        [sys.executable, "-c", _BUILD_CHECKPOINTS, str(folder), str(INSTANT_CONFIG)],
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
