"""The proof: a fresh environment with only ``uwm_d2[deploy]`` writes the PyTorch path's submission.

The briefly trained semantic model is exported with ``tools/export_model.py``; a new virtual
environment gets ``pip install --no-index --find-links wheelhouse "uwm_d2[deploy]"`` (the wheel
folder ``make test`` builds, with pip's configuration switched off: no index, no torch, no
detectron2); a copy of ``tools/infer_submit.py`` runs there with ``--exported`` and its
submission must equal, byte for byte, the one ``infer_submit --config-file`` writes with PyTorch.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO_ROOT, SEMANTIC, Model, run_tool

pytestmark = pytest.mark.slow


def clean_env() -> dict[str, str]:
    """No checkout on the path, no pip configuration, no index."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    return {**env, "PIP_CONFIG_FILE": os.devnull, "PIP_NO_INDEX": "1", "PYTHONNOUSERSITE": "1"}


def run(command: list[str], cwd: Path, timeout: float = 300) -> str:
    result = subprocess.run(
        command, cwd=cwd, env=clean_env(), capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_a_deploy_only_environment_writes_the_pytorch_submission(
    trained_semantic: Model, phantom_root: Path, tmp_path: Path
) -> None:
    # The wheel folder (cached: seconds when make test already built it). The script itself,
    # not `make wheelhouse`: that would first re-run the install into the shared environment.
    built = subprocess.run(
        [sys.executable, "scripts/build_wheelhouse.py"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    assert built.returncode == 0, built.stdout + built.stderr
    export = tmp_path / "export"
    result = run_tool(
        "export_model",
        ["--config-file", SEMANTIC, "--format", "onnx", "--out", str(export),
         *trained_semantic.all_opts],
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1].startswith(
        f"wrote {export}: 1 onnx network(s) of 1 member"
    )

    venv = tmp_path / "venv"
    python = str(venv / "bin" / "python")
    run([sys._base_executable, "-m", "venv", str(venv)], cwd=tmp_path)
    run(
        [python, "-m", "pip", "install", "--quiet", "--no-index", "--find-links",
         str(REPO_ROOT / "wheelhouse"), "uwm_d2[deploy]"],
        cwd=tmp_path, timeout=600,
    )  # fmt: skip
    installed = json.loads(run([python, "-m", "pip", "list", "--format", "json"], cwd=tmp_path))
    names = {item["name"].lower().replace("_", "-") for item in installed}
    assert {"uwm-d2", "onnxruntime", "numpy", "opencv-python-headless", "pandas"} <= names
    assert not names & {"torch", "torchvision", "pb1-detectron2", "fvcore", "pycocotools"}

    # What a notebook gets as a dataset: the tool next to the export.
    dataset = tmp_path / "dataset"
    (dataset / "tools").mkdir(parents=True)
    shutil.copy2(REPO_ROOT / "tools" / "infer_submit.py", dataset / "tools")
    deployed = tmp_path / "deploy.csv"
    run(
        [python, str(dataset / "tools" / "infer_submit.py"), "--exported", str(export),
         "--data-root", str(phantom_root), "--tta", "--out", str(deployed)],
        cwd=tmp_path,
    )  # fmt: skip
    reference = tmp_path / "torch.csv"
    result = run_tool(
        "infer_submit",
        ["--config-file", SEMANTIC, "--data-root", str(phantom_root), "--tta",
         "--out", str(reference), *trained_semantic.all_opts],
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    text = deployed.read_text()
    assert text == reference.read_text()
    assert any(line.split(",")[2] for line in text.splitlines()[1:])  # some mask predicted
    # The package came from the wheel, and the predictor loaded neither torch nor detectron2.
    report = run(
        [python, "-c", "import sys, uwm_d2.deploy; print(uwm_d2.__file__); "
         "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'detectron2'}))"],
        cwd=tmp_path,
    ).splitlines()  # fmt: skip
    assert Path(report[0]).is_relative_to(venv) and report[1] == "[]"
