#!/usr/bin/env python
"""Install detectron2 into the running interpreter's environment, building it once if needed.

detectron2 is not on the package index under its own name. We take the ``pb1-detectron2==0.6``
source distribution (pinned by version and sha256; its Python files equal upstream v0.6 but its
C++/CUDA sources are missing), fix it up for today's torch, Pillow, NumPy 2 and setuptools, build a
pure-Python wheel once into ``.cache/wheels/`` (ignored by git) and install from there, so later
installs are offline and take seconds.

Order of preference:
1. an importable detectron2 is already present (e.g. an official build with ``_C``): use it,
   unless it is an earlier patched build of ours (another ``PATCHED_VERSION``);
2. a wheel built earlier lies in the cache: install it;
3. otherwise download the pinned sdist, patch, build the wheel, install it.

Nothing in uwm_d2 depends on ``detectron2._C``: Mask R-CNN needs none of the ops it provides.
"""

from __future__ import annotations

import argparse
import glob
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

SDIST_NAME = "pb1-detectron2"
SDIST_VERSION = "0.6"
SDIST_SHA256 = "5d2e9e51e523ec72f6a31cca04b0a515492e9514b773a3d134cedc0677170b29"
# The local version label marks our patched build; bump it whenever a fix-up below changes.
PATCHED_VERSION = "0.6+uwm.2"
REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CACHE = REPO_ROOT / ".cache"


def _replace(path: Path, old: str, new: str, count: int = 1) -> None:
    """Replace ``old`` by ``new`` in ``path``; fail loudly if the sdist no longer matches."""
    text = path.read_text()
    if text.count(old) < count:
        raise SystemExit(f"error: fix-up for {path.name} no longer applies ({old!r} not found)")
    path.write_text(text.replace(old, new))


def apply_fixups(src: Path) -> None:
    """Make the v0.6 sources build and import on today's stack; one line of why for each."""
    d2 = src / "detectron2"
    # 1. The sdist lacks layers/csrc: declare no C++ extension (and no torch BuildExtension).
    _replace(src / "setup.py", "ext_modules=get_extensions(),", "ext_modules=[],")
    _replace(
        src / "setup.py",
        'cmdclass={"build_ext": torch.utils.cpp_extension.BuildExtension},',
        "cmdclass={},",
    )
    # 2. Our version label, so a cached wheel says it is the patched build.
    _replace(src / "setup.py", "version=get_version(),", f'version="{PATCHED_VERSION}",')
    # 3. Configs live under detectron2/model_zoo/configs in the sdist: package them from there.
    _replace(
        src / "setup.py",
        'package_data={"detectron2.model_zoo": get_model_zoo_configs()},',
        'package_data={"detectron2.model_zoo": ["configs/**/*.yaml", "configs/**/*.py"]},',
    )
    # 4. Dependency pins from 2021 that cannot install with Python 3.11 / NumPy 2: drop or relax.
    setup_text = (src / "setup.py").read_text()
    setup_text = setup_text.replace('"black==21.4b2",', "")
    setup_text = setup_text.replace('"future",  # used by caffe2', "")
    setup_text = setup_text.replace('"pydot",  # used to save caffe2 SVGs', "")
    setup_text = setup_text.replace('"iopath>=0.1.7,<0.1.10"', '"iopath>=0.1.7,<0.1.11"')
    (src / "setup.py").write_text(setup_text)
    # 5. Modules that import the missing _C at import time: make the import optional.
    for relative in (
        "layers/deform_conv.py",
        "layers/rotated_boxes.py",
        "layers/roi_align_rotated.py",
        "evaluation/fast_eval_api.py",
    ):
        _replace(
            d2 / relative,
            "from detectron2 import _C\n",
            "try:  # uwm_d2: _C is not built; these ops are unused by Mask R-CNN\n"
            "    from detectron2 import _C\n"
            "except ImportError:\n"
            "    _C = None\n",
        )
    # 6. pkg_resources is gone from current setuptools: find bundled configs with importlib.
    model_zoo = d2 / "model_zoo" / "model_zoo.py"
    _replace(model_zoo, "import pkg_resources\n", "import importlib.resources\n")
    _replace(
        model_zoo,
        'pkg_resources.resource_filename(\n        "detectron2.model_zoo", '
        'os.path.join("configs", config_path)\n    )',
        'str(importlib.resources.files("detectron2.model_zoo").joinpath("configs", config_path))',
    )
    # 7. Pillow >= 10 removed Image.LINEAR (same filter as BILINEAR).
    _replace(d2 / "data/transforms/transform.py", "Image.LINEAR", "Image.BILINEAR")
    # 8. NumPy 2 removed the aliases np.int / np.float / np.str / np.object: use the builtins.
    alias = re.compile(r"\bnp\.(int|float|str|object)\b(?![\w.])")
    for path in d2.rglob("*.py"):
        text = path.read_text()
        patched = alias.sub(r"\1", text)
        if patched != text:
            path.write_text(patched)
    # 9. export/api.py imports caffe2 (gone from torch) at import time: keep its TorchScript parts.
    _replace(
        d2 / "export/__init__.py",
        "from .api import *\n",
        "try:  # uwm_d2: the caffe2/ONNX export API needs caffe2; TorchScript export needs none\n"
        "    from .api import *\n"
        "except ModuleNotFoundError as error:\n"
        "    if not (error.name or '').startswith('caffe2'):\n"
        "        raise\n",
    )
    # 10. random.sample() refuses a set since Python 3.11: MapDataset's retry path raised TypeError.
    _replace(
        d2 / "data/common.py",
        "self._rng.sample(self._fallback_candidates, k=1)",
        "self._rng.sample(sorted(self._fallback_candidates), k=1)",
    )
    # 11. torch's schedulers now derive from LRScheduler, not _LRScheduler: checkpoint them too.
    _replace(
        d2 / "engine/hooks.py",
        "isinstance(self.scheduler, torch.optim.lr_scheduler._LRScheduler)",
        "isinstance(self.scheduler, torch.optim.lr_scheduler.LRScheduler)",
        count=2,
    )
    # 12. DDP takes device_ids only for a CUDA model: a CPU model on gloo must be given none.
    _replace(
        d2 / "engine/defaults.py",
        '    if "device_ids" not in kwargs:\n',
        '    if "device_ids" not in kwargs and any(p.is_cuda for p in model.parameters()):\n',
    )


def detectron2_importable(python: str) -> bool:
    probe = "import detectron2, detectron2.modeling, detectron2.engine"
    return subprocess.run([python, "-c", probe], capture_output=True).returncode == 0


def installed_version(python: str) -> str | None:
    """The version of the ``pb1-detectron2`` distribution installed for ``python``, if any."""
    probe = f"import importlib.metadata as m; print(m.version({SDIST_NAME!r}))"
    result = subprocess.run([python, "-c", probe], capture_output=True, text=True)
    return result.stdout.strip() if result.returncode == 0 else None


#: ``--quiet``: pip prints only warnings and errors (scripts/install.sh shows those).
PIP_QUIET: list[str] = []


def pip(python: str, *args: str) -> None:
    subprocess.run([python, "-m", "pip", *args[:1], *PIP_QUIET, *args[1:]], check=True)


def cached_wheel(cache: Path) -> Path | None:
    name = SDIST_NAME.replace("-", "_")
    wheels = sorted(glob.glob(str(cache / "wheels" / f"{name}-{PATCHED_VERSION}-*.whl")))
    return Path(wheels[-1]) if wheels else None


def build_wheel(python: str, cache: Path) -> Path:
    """Download the pinned sdist (hash-checked), patch it and build a wheel into the cache."""
    sdist_dir = cache / "sdist"
    sdist_dir.mkdir(parents=True, exist_ok=True)
    sdist = sdist_dir / f"{SDIST_NAME}-{SDIST_VERSION}.tar.gz"
    if not sdist.exists():
        with tempfile.TemporaryDirectory() as tmp:
            requirement = Path(tmp) / "requirements.txt"
            requirement.write_text(f"{SDIST_NAME}=={SDIST_VERSION} --hash=sha256:{SDIST_SHA256}\n")
            # --no-build-isolation: preparing the sdist's metadata imports torch.
            pip(
                python,
                "download",
                "--no-deps",
                "--no-binary",
                ":all:",
                "--no-build-isolation",
                "-r",
                str(requirement),
                "-d",
                tmp,
            )
            shutil.move(str(next(Path(tmp).glob("*.tar.gz"))), sdist)
    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(sdist) as archive:
            archive.extractall(tmp, filter="data")
        src = next(Path(tmp).glob(f"{SDIST_NAME}-{SDIST_VERSION}"))
        apply_fixups(src)
        pip(
            python,
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(cache / "wheels"),
            str(src),
        )
    wheel = cached_wheel(cache)
    if wheel is None:
        raise SystemExit("error: building the detectron2 wheel produced no wheel")
    return wheel


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="wheel and sdist cache")
    parser.add_argument("--force", action="store_true", help="rebuild even if detectron2 imports")
    parser.add_argument("--quiet", action="store_true", help="pip prints warnings and errors only")
    args = parser.parse_args()
    if args.quiet:
        PIP_QUIET.append("--quiet")
    python = sys.executable
    # An older patched build of ours (another label) is replaced; any other detectron2 is kept.
    installed = installed_version(python)
    stale = installed is not None and installed != PATCHED_VERSION
    if stale:
        print(f"detectron2: installed {installed} is not the current fix-up set {PATCHED_VERSION}")
    if not args.force and not stale and detectron2_importable(python):
        print("detectron2: already importable, nothing to do")
        return 0
    wheel = cached_wheel(args.cache)
    if wheel is None or args.force:
        print(f"detectron2: building {SDIST_NAME}=={SDIST_VERSION} into {args.cache / 'wheels'}")
        wheel = build_wheel(python, args.cache)
    if installed is not None:
        # Same version but broken, or an older label: remove it, so that one plain install below
        # puts the wheel in (no second "already installed" pass with --force-reinstall).
        pip(python, "uninstall", "--yes", SDIST_NAME)
    print(f"detectron2: installing {wheel.name}")
    # Its dependencies (fvcore, iopath, pycocotools, ...) come from the index, pinned in setup.py.
    pip(python, "install", str(wheel))
    if not detectron2_importable(python):
        raise SystemExit("error: detectron2 still does not import after installing " + wheel.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
