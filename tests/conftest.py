"""What every test shares: the repository's paths, the instant configs, running a tool, and tiny
synthetic data roots (uwm_d2.phantom) built once per test session.

Test modules import the constants and helpers (``from ..conftest import REPO_ROOT``).
``tiny_phantom_factory(**kwargs)`` returns the root of a phantom made with small defaults (a few
cases, 8 slices per scan, one process); equal arguments share one build. Treat those roots as
read-only; tests that modify data take ``phantom_copy`` (a fresh copy of ``phantom_root``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

#: The instant-test config of each model kind (a few iterations: smoke tests), relative to the
#: repository, for tests that run from another checkout or a copy of it.
INSTANT_CONFIGS: dict[str, str] = {
    "mask_rcnn": "configs/quick_schedules/mask_rcnn_R_18_FPN_instant_test.yaml",
    "semantic": "configs/quick_schedules/semantic_R_18_FPN_instant_test.yaml",
    "combined": "configs/quick_schedules/panoptic_fpn_R_18_instant_test.yaml",
}
#: The tests' default model: the Mask R-CNN instant config, as an absolute path.
INSTANT_CONFIG = REPO_ROOT / INSTANT_CONFIGS["mask_rcnn"]

#: Small, fast inference: tiny input, and a score cut that no untrained box reaches, so the mask
#: head has nothing to do.
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


def tool_env(**extra: str) -> dict[str, str]:
    """The environment a tool or a child interpreter runs in: this checkout first on the path
    (not another copy of uwm_d2 the environment may have installed), plus ``extra``."""
    return {**os.environ, "PYTHONPATH": str(REPO_ROOT), **extra}


def tool_command(tool: str, args: list[str]) -> list[str]:
    return [sys.executable, str(REPO_ROOT / "tools" / f"{tool}.py"), *args]


def run_tool(tool: str, args: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``tools/<tool>.py args`` from the repository root to completion, capturing text."""
    return subprocess.run(
        tool_command(tool, args),
        cwd=REPO_ROOT,
        env=tool_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


#: Small enough to build in well under a second, large enough to hold every scan geometry case
#: that matters (the first train and test cases are always 360x310) and empty slices.
TINY_PHANTOM: dict[str, Any] = {
    "cases": 3,
    "test_cases": 1,
    "max_slices": 8,
    "days_per_case": (1, 2),
    "seed": 0,
    "workers": 1,
    "progress": False,
}


#: The longest test files (the help examples' chain, the bad-input table, two-process trainings,
#: exports) start first: make test runs files on parallel workers, and a long file that starts
#: last runs alone at the end while the other workers sit idle.
LONGEST_FIRST = (
    "tools/test_examples.py",
    "tools/test_bad_input.py",
    "engine/test_distributed.py",
    "deploy/test_export.py",
    "engine/test_run_folder.py",
    "engine/test_trainer.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        parts = item.path.parts[-2:]  # "<folder>/<file>", as the list names them
        name = "/".join(parts)
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: the order within a file and among the rest is kept


@pytest.fixture(scope="session")
def tiny_phantom_factory(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    from uwm_d2.phantom import make_phantom

    built: dict[str, Path] = {}

    def factory(**overrides: Any) -> Path:
        params = {**TINY_PHANTOM, **overrides}
        key = repr(sorted(params.items()))
        if key not in built:
            root = tmp_path_factory.mktemp("phantom") / "data"
            make_phantom(root, **params)
            built[key] = root
        return built[key]

    return factory


@pytest.fixture(scope="session")
def phantom_root(tiny_phantom_factory: Callable[..., Path]) -> Path:
    """The default tiny phantom (read-only)."""
    return tiny_phantom_factory()


@pytest.fixture
def phantom_copy(phantom_root: Path, tmp_path: Path) -> Path:
    """A private, writable copy of :func:`phantom_root`."""
    target = tmp_path / "data"
    shutil.copytree(phantom_root, target)
    return target
