"""docs/design.md's module map against the code: every module listed, and the torch-free ones free.

The map's last column says whether a module imports torch or detectron2; each module marked "no"
(and the ``uwm_d2`` and ``uwm_d2.core`` packages, which the map's text promises stay light) is
imported on its own in a fresh child of one interpreter that preloaded the third-party libraries
they may use, and must leave torch, torchvision and detectron2 out of ``sys.modules``.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from .conftest import REPO_ROOT, tool_env

DESIGN = REPO_ROOT / "docs" / "design.md"
HEAVY = ("torch", "torchvision", "detectron2")
#: What the torch-free modules may import: loaded once before the children fork, so that each
#: child pays only for uwm_d2's own modules.
PRELOAD = ("numpy", "pandas", "scipy.spatial", "scipy.ndimage", "cv2", "nibabel", "yaml", "PIL")


def _package_modules() -> list[str]:
    """Every module of ``uwm_d2`` (packages by their own name), sorted."""
    names = []
    for path in sorted((REPO_ROOT / "uwm_d2").rglob("*.py")):
        parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names.append(".".join(parts))
    return names


def _map_rows() -> list[tuple[list[str], bool]]:
    """``(modules, imports torch or detectron2)`` of each row of the module map.

    A row names files (``uwm_d2/core/io.py``; a bare name after it is in the same folder) or a
    folder (``uwm_d2/phantom/``: the package and every module in it).
    """
    modules = _package_modules()
    rows = []
    for line in DESIGN.read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if not line.startswith("| `uwm_d2") or len(cells) < 3:
            continue
        named, folder = [], ""
        for item in re.findall(r"`([^`]+)`", cells[0]):
            path = item if "/" in item else folder + item
            folder = path.rsplit("/", 1)[0] + "/"
            dotted = path.removesuffix(".py").rstrip("/").replace("/", ".")
            if path.endswith("/"):
                named += [name for name in modules if name.startswith(dotted)]
            else:
                named.append(dotted)
        rows.append((named, cells[-1] != "no"))
    return rows


def _torch_free_modules() -> list[str]:
    listed = [name for named, heavy in _map_rows() if not heavy for name in named]
    return sorted({"uwm_d2", "uwm_d2.core", *listed})


_CHILDREN = """
import importlib, json, os, sys
for name in {preload!r}:
    try:
        importlib.import_module(name)
    except ImportError:
        pass
found = {{}}
for module in {modules!r}:
    read, write = os.pipe()
    if os.fork() == 0:
        os.close(read)
        importlib.import_module(module)
        heavy = sorted(n for n in sys.modules if n.split(".")[0] in {heavy!r})
        os.write(write, json.dumps(heavy).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        found[module] = json.loads(pipe.read() or '["(the import failed)"]')
    os.wait()
print(json.dumps(found))
"""


@pytest.fixture(scope="module")
def heavy_imports() -> dict[str, list[str]]:
    """``{module: the heavy packages importing it loaded}`` for every torch-free module."""
    code = _CHILDREN.format(preload=PRELOAD, modules=_torch_free_modules(), heavy=HEAVY)
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        env=tool_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_every_module_is_on_the_map() -> None:
    listed = {name for named, _ in _map_rows() for name in named}
    modules = _package_modules()
    files = [name for name in modules if not (REPO_ROOT / name.replace(".", "/")).is_dir()]
    assert [name for name in files if name not in listed] == []
    assert sorted(listed - set(modules)) == []  # the map names no module that is gone


@pytest.mark.parametrize("module", _torch_free_modules())
def test_imports_neither_torch_nor_detectron2(module: str, heavy_imports: dict) -> None:
    assert heavy_imports[module] == []
