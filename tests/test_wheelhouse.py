"""The offline bundle: `make wheelhouse` makes a folder from which uwm_d2 installs with no index.

The proof is the real thing, on a machine like the one it is for (no index, torch present):
``make wheelhouse`` (cached: seconds after the first build), a fresh virtual environment that
"already has torch", ``pip install --no-index --find-links wheelhouse "uwm_d2[detectron2]"``
with pip's configuration switched off (``benchmarks/gpu_smoke.sh --install-only``, the same step
the GPU machines run), ``pip check``, then ``tools/infer_submit.py`` from a copy of the tool and
the configs (what a notebook gets as a dataset) on a tiny phantom with an untrained checkpoint.

Installing torch (5.5 GB, over a minute) in a test is not affordable, so the environment sees the
main environment's torch, torchvision and the distributions only they need through a ``.pth``
file naming a folder of symbolic links to them, dist-info folders included, so pip counts them as
installed. numpy and Pillow are deliberately not linked (torchvision needs them, and so does
uwm_d2): the wheel folder must provide them. pip never uninstalls from a folder outside the
environment it installs into, so the main environment cannot be touched through the links.
"""

from __future__ import annotations

import importlib.metadata as metadata
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from .conftest import INSTANT_CONFIGS, REPO_ROOT

WHEELHOUSE = REPO_ROOT / "wheelhouse"
GPU_SMOKE = REPO_ROOT / "benchmarks" / "gpu_smoke.sh"
#: torchvision's own requirements that the wheel folder must supply (uwm_d2 needs them too).
NOT_LINKED = frozenset({"numpy", "pillow"})

pytestmark = pytest.mark.slow


def load_script(path: Path, name: str) -> ModuleType:
    """A module from a script file (scripts/ and tests/ are not packages)."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment minus anything that would put the checkout on sys.path."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    return {**env, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONWARNINGS": "ignore", **extra}


def make_wheelhouse() -> str:
    """``make wheelhouse`` (a no-op in seconds when `make test` already built it)."""
    result = subprocess.run(
        ["make", "--no-print-directory", "wheelhouse"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=1800,  # a cold build resolves and downloads ~170 MiB
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def torch_family() -> list[metadata.Distribution]:
    """torch, torchvision and, recursively, their requirements (markers evaluated here)."""
    found: dict[str, metadata.Distribution] = {}
    todo = ["torch", "torchvision"]
    while todo:
        name = canonicalize_name(todo.pop())
        if name in found or name in NOT_LINKED:
            continue
        dist = metadata.distribution(name)
        found[name] = dist
        for text in dist.requires or []:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    return list(found.values())


def link_torch(folder: Path) -> set[str]:
    """Symbolic links to the top-level entries (packages, modules, dist-info folders) of the
    torch family's distributions; returns the entries' names."""
    folder.mkdir(parents=True)
    names: set[str] = set()
    for dist in torch_family():
        site = Path(dist.locate_file(""))
        for file in dist.files or []:
            top = file.parts[0]
            if top in ("..", "__pycache__") or top in names:
                continue  # scripts in bin/, bytecode, entries already linked
            names.add(top)
            (folder / top).symlink_to(site / top)
    return names


def install_command(root: Path) -> list[str]:
    """``gpu_smoke.sh --install-only`` into ``root/venv``, torch through ``root/torch-site``."""
    return [
        "bash", str(GPU_SMOKE), "--install-only",
        "--python", sys._base_executable,  # the interpreter this environment was made from
        "--torch-site", str(root / "torch-site"), "--wheels", str(WHEELHOUSE),
        "--venv", str(root / "venv"), "--out", str(root / "smoke"),
    ]  # fmt: skip


@dataclass(frozen=True)
class OfflineEnv:
    venv: Path
    python: Path
    torch_site: Path
    install_output: str


def offline_env(base: Path) -> OfflineEnv:
    """The environment of the module docstring, built once per session under ``base``.

    tests/test_gpu_smoke.py calls this too, with the same ``base``: whichever runs first pays.
    """
    root = base / "offline-env"
    done = root / "done.json"
    if not done.is_file():
        make_wheelhouse()
        shutil.rmtree(root, ignore_errors=True)
        link_torch(root / "torch-site")
        result = subprocess.run(
            install_command(root), capture_output=True, text=True, timeout=900, env=clean_env()
        )
        assert result.returncode == 0, result.stdout + result.stderr
        done.write_text(
            json.dumps(
                {
                    "venv": str(root / "venv"),
                    "python": str(root / "venv" / "bin" / "python"),
                    "torch_site": str(root / "torch-site"),
                    "install_output": result.stdout + result.stderr,
                }
            )
        )
    return OfflineEnv(**{key: value for key, value in json.loads(done.read_text()).items()})


def run_in(env: OfflineEnv, *args: str, cwd: Path, timeout: float = 300) -> str:
    result = subprocess.run(
        [str(env.python), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=clean_env(PIP_NO_INDEX="1", PIP_CONFIG_FILE=os.devnull),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


# ----------------------------------------------------------------------------------------------
# The folder itself.


def test_extra_pins_the_detectron2_build_that_build_detectron2_makes() -> None:
    build_detectron2 = load_script(REPO_ROOT / "scripts" / "build_detectron2.py", "_uwm_bd2")
    setup_text = (REPO_ROOT / "setup.py").read_text()
    pin = f"{build_detectron2.SDIST_NAME}=={build_detectron2.PATCHED_VERSION}"
    assert f'DETECTRON2 = "{pin}"' in setup_text


def test_wheelhouse_holds_everything_but_torch_and_a_second_build_is_a_no_op() -> None:
    make_wheelhouse()
    again = make_wheelhouse()
    assert "unchanged" in again, again  # assembled from the cache, nothing rebuilt
    names = {canonicalize_name(p.name.split("-")[0]) for p in WHEELHOUSE.glob("*.whl")}
    needed = {
        "pb1-detectron2", "uwm-d2", "fvcore", "iopath", "pycocotools", "yacs", "omegaconf",
        "hydra-core", "nibabel", "numpy", "pandas", "scipy", "opencv-python-headless",
        "matplotlib", "pillow", "tensorboard",
    }  # fmt: skip
    assert needed <= names, needed - names
    assert not {n for n in names if n in ("torch", "torchvision", "triton") or "nvidia" in n}
    info = json.loads((WHEELHOUSE / "wheelhouse.json").read_text())
    assert sorted(info["wheels"]) == sorted(p.name for p in WHEELHOUSE.glob("*.whl"))
    # The uwm_d2 wheel is this checkout's code (rebuilt whenever the sources change).
    wheel = next(WHEELHOUSE.glob("uwm_d2-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        packaged = {n for n in archive.namelist() if n.startswith("uwm_d2/") and n.endswith(".py")}
    on_disk = {
        p.relative_to(REPO_ROOT).as_posix()
        for p in (REPO_ROOT / "uwm_d2").rglob("*.py")
        if "__pycache__" not in p.parts
    }
    assert packaged == on_disk


def test_closure_follows_the_targets_markers_and_leaves_out_what_is_provided() -> None:
    module = load_script(REPO_ROOT / "scripts" / "build_wheelhouse.py", "_uwm_bw")

    def wheel(name: str, *requires: str) -> object:
        return module.WheelInfo(
            Path(f"{name}.whl"), name, "1.0", [Requirement(r) for r in requires]
        )

    wheels = {
        "app": wheel("app", "lib>=1", 'backport; python_version < "3.12"', "big", "x[extra]"),
        "lib": wheel("lib"),
        "backport": wheel("backport"),
        "big": wheel("big", "bigdep"),
        "bigdep": wheel("bigdep"),
        "x": wheel("x", 'y; extra == "extra"'),
        "y": wheel("y"),
    }
    env312 = module.Target("3.12").marker_environment()
    reached, missing = module.closure([("app", frozenset())], wheels, env312, frozenset({"big"}))
    assert reached == {"app", "lib", "x", "y"} and missing == []
    env_old = {**env312, "python_version": "3.11"}
    reached, _ = module.closure([("app", frozenset())], wheels, env_old, frozenset())
    assert {"backport", "big", "bigdep"} <= reached
    del wheels["y"]
    _, missing = module.closure([("app", frozenset())], wheels, env312, frozenset())
    assert missing == ["y"]
    assert {"numpy", "scipy", "opencv-python-headless"} <= module.leave_out_names("gpu-image")
    assert module.leave_out_names("Foo_Bar, numpy") == {"foo-bar", "numpy"}


# ----------------------------------------------------------------------------------------------
# Installing it with no index, beside an existing torch, and using it.


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> OfflineEnv:
    return offline_env(tmp_path_factory.getbasetemp())


def test_installs_offline_beside_torch_and_is_consistent(env: OfflineEnv, tmp_path: Path) -> None:
    assert "pip install --no-index --find-links" in env.install_output
    run_in(env, "-m", "pip", "check", cwd=tmp_path)
    report = json.loads(
        run_in(
            env,
            "-c",
            "import json, torch, numpy, detectron2, uwm_d2\n"
            "modules = (torch, numpy, detectron2, uwm_d2)\n"
            "print(json.dumps({m.__name__: m.__file__ for m in modules}))",
            cwd=tmp_path,
        )
    )
    # torch through the links; everything else installed into the new environment from the
    # wheel folder (numpy included), never from the checkout.
    assert Path(report["torch"]).parent.parent == Path(env.torch_site)
    for name in ("numpy", "detectron2", "uwm_d2"):
        assert Path(report[name]).is_relative_to(env.venv), (name, report[name])
    installed = json.loads(
        run_in(env, "-m", "pip", "list", "--local", "--format", "json", cwd=tmp_path)
    )
    local = {canonicalize_name(item["name"]): item["version"] for item in installed}
    assert local["pb1-detectron2"] == "0.6+uwm.2"
    assert "torch" not in local and "torchvision" not in local


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
def test_infer_submit_runs_from_the_offline_install(
    env: OfflineEnv, tmp_path: Path, tiny_phantom_factory
) -> None:
    import torch
    from detectron2.modeling import build_model

    from uwm_d2.config import build_cfg

    data_root = tiny_phantom_factory()
    checkpoint = tmp_path / "model.pth"
    cfg = build_cfg(REPO_ROOT / INSTANT_CONFIGS["mask_rcnn"], ["MODEL.DEVICE", "cpu"])
    torch.manual_seed(0)
    torch.save({"model": build_model(cfg).state_dict()}, checkpoint)
    # What a notebook gets as a dataset: the tool and the configs, next to the wheel folder.
    dataset = tmp_path / "dataset"
    (dataset / "tools").mkdir(parents=True)
    shutil.copy2(REPO_ROOT / "tools" / "infer_submit.py", dataset / "tools")
    shutil.copytree(REPO_ROOT / "configs", dataset / "configs")
    out = tmp_path / "submission.csv"
    run_in(
        env,
        str(dataset / "tools" / "infer_submit.py"),
        "--config-file", str(dataset / INSTANT_CONFIGS["mask_rcnn"]), "--data-root", str(data_root),
        "--out", str(out), "MODEL.WEIGHTS", str(checkpoint), "MODEL.DEVICE", "cpu",
        cwd=tmp_path, timeout=600,
    )  # fmt: skip
    lines = out.read_text().splitlines()
    sample = (data_root / "sample_submission.csv").read_text().splitlines()
    assert lines[0].split(",")[:2] == ["id", "class"]
    assert len(lines) == len(sample) > 1
