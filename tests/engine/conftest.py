"""Fixtures of the trainer tests: a registered tiny phantom and one torch thread.

One thread: on a 2-core machine that also runs other processes, torch's OpenMP pool with 2
threads was measured 20x slower than 1 thread for these tiny models (threads spin on each other).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def instant_data(phantom_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """``(data_root, coco_dir)``: the tiny phantom and its COCO files with 2 folds."""
    from uwm_d2.data.coco import make_coco

    coco = tmp_path_factory.mktemp("engine") / "coco"
    make_coco(phantom_root, coco, num_folds=2, workers=1, progress=False)
    return phantom_root, coco
