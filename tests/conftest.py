"""Shared fixtures: tiny synthetic data roots (uwm_d2.phantom), built once per test session.

``tiny_phantom_factory(**kwargs)`` returns the root of a phantom made with small defaults (a few
cases, 8 slices per scan, one process); equal arguments share one build. Treat those roots as
read-only; tests that modify data take ``phantom_copy`` (a fresh copy of ``phantom_root``).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

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
