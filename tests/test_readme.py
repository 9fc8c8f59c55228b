"""The README's by-hand quick start, run as written (at smoke-test sizes), so it cannot rot.

The block between ``<!-- quickstart -->`` and ``<!-- /quickstart -->`` is extracted and run with
bash in a scratch folder that holds this checkout's ``tools/``, ``configs/`` and ``.venv`` (as
links), after a few documented substitutions that shrink it to seconds: a tiny phantom, the
instant configs instead of the demo configs, and fewer folds and iterations. Every command of the
block must succeed, and the files each step hands to the next are checked: a submission with the
sample's rows, scores under every reading, pictures, NIfTI volumes.

This also covers what the former end-to-end test checked (train → infer with TTA and an ensemble →
evaluate, through the tools).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from .conftest import INSTANT_CONFIGS, REPO_ROOT

#: README text → what the test runs instead: the same commands at smoke-test sizes.
SMALLER = {
    "--cases 8 --test-cases 2 --max-slices 40": "--cases 3 --test-cases 1 --max-slices 8",
    "--folds 4": "--folds 2",
    "UWM.NUM_FOLDS 4": "UWM.NUM_FOLDS 2",
    "configs/demo/semantic_R_18_FPN_cpu_demo.yaml": INSTANT_CONFIGS["semantic"],
    "configs/demo/mask_rcnn_R_18_FPN_cpu_demo.yaml": INSTANT_CONFIGS["mask_rcnn"],
    "SOLVER.MAX_ITER 400": "SOLVER.MAX_ITER 8",
}


def quickstart() -> str:
    text = (REPO_ROOT / "README.md").read_text()
    match = re.search(r"<!-- quickstart -->\s*```bash\n(.*?)```\s*<!-- /quickstart -->", text, re.S)
    assert match, "README.md has no quick-start block between <!-- quickstart --> markers"
    return match.group(1)


def test_every_substitution_applies() -> None:
    block = quickstart()
    for original in SMALLER:
        assert original in block, f"the README no longer says {original!r}: update SMALLER"


@pytest.mark.slow
def test_readme_quick_start_runs(tmp_path: Path) -> None:
    script = quickstart()
    for original, smaller in SMALLER.items():
        script = script.replace(original, smaller)
    for name in ("tools", "configs", ".venv"):
        (tmp_path / name).symlink_to(REPO_ROOT / name)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    env.pop("VIRTUAL_ENV", None)
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, f"{result.stdout[-2000:]}\n{result.stderr[-4000:]}"

    data, output = tmp_path / "data" / "phantom", tmp_path / "output"
    sample = pd.read_csv(data / "sample_submission.csv", keep_default_na=False)
    for name in ("submission.csv", "ensemble_submission.csv"):
        rows = pd.read_csv(output / name, keep_default_na=False)
        assert list(rows.columns) == ["id", "class", "predicted"]
        assert rows[["id", "class"]].equals(sample[["id", "class"]])
    scores = json.loads((output / "scores.json").read_text())
    assert 0.0 <= scores["score"] <= 1.0
    assert set(scores["readings"]) == {"project", "competition", "mlebench"}
    # Trained, resumed to 8 iterations, and scored by --eval-only.
    assert (output / "semantic" / "last_checkpoint").read_text().strip() == "model_final.pth"
    log = (output / "semantic" / "log.txt").read_text()
    assert "Starting training from iteration 6" in log
    assert (output / "semantic" / "inference" / "uwm_results_uwm_val.json").is_file()
    assert sorted(p.suffix for p in (output / "pictures").iterdir()) == [".gif", ".png", ".png"]
    assert any(path.name.endswith("_seg.nii.gz") for path in (output / "nifti").iterdir())
