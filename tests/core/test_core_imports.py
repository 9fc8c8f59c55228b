"""The numpy-only core must import without torch or detectron2 (design rule of uwm_d2.core)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]

#: Modules outside ``uwm_d2.core``'s own imports that must load without torch too.
TORCH_FREE_MODULES = (
    "uwm_d2.core.merge_steps",
    "uwm_d2.core.probability_files",
    "uwm_d2.crossval.candidates",
    "uwm_d2.crossval.members",
    "uwm_d2.crossval.passes",
    "uwm_d2.crossval.search",
    "uwm_d2.crossval.sources",
    "uwm_d2.crossval.synthetic",
    "uwm_d2.crossval.truth",
    "uwm_d2.crossval.uncertainty",
)


def test_importing_core_loads_neither_torch_nor_detectron2() -> None:
    code = (
        "import sys\n"
        "import uwm_d2.core\n"
        + "".join(f"import {name}\n" for name in TORCH_FREE_MODULES)
        + "from uwm_d2.core import rle_encode, rle_decode, score_volumes, MergeRule\n"
        "heavy = sorted(name for name in sys.modules\n"
        "               if name.split('.')[0] in ('torch', 'detectron2', 'torchvision'))\n"
        "print(','.join(heavy))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert result.stdout.strip() == ""


def test_public_api_is_reexported() -> None:
    import uwm_d2.core as core

    for name in core.__all__:
        assert hasattr(core, name), name
    for name in (
        "rle_encode",
        "rle_decode",
        "CLASSES",
        "parse_slice_id",
        "parse_scan_name",
        "SliceId",
        "ScanName",
        "UWMInputError",
        "read_scan",
        "normalize_intensity",
        "stack_25d",
        "neighbor_indices",
        "score_volumes",
        "MergeRule",
    ):
        assert name in core.__all__, name
