#!/usr/bin/env python
"""Build a folder of wheels (a "wheelhouse") that installs uwm_d2 with no package index.

Everything this project needs beyond torch and torchvision, as wheels: the patched detectron2
(``scripts/build_detectron2.py``), uwm_d2 itself and every dependency of both (numpy, pandas,
scipy, OpenCV, pycocotools, fvcore, iopath, omegaconf, hydra-core, nibabel, ...), and what
exported models need (onnxruntime). On a machine without internet that already has torch and
torchvision, or on one with neither for exported models::

    pip install --no-index --find-links wheelhouse "uwm_d2[detectron2]"
    pip install --no-index --find-links wheelhouse "uwm_d2[deploy]"

Examples::

    .venv/bin/python scripts/build_wheelhouse.py          # for this interpreter, into wheelhouse/
    # CPython 3.12 manylinux x86_64, minus what the GPU image holds, into wheelhouse-cp312/:
    .venv/bin/python scripts/build_wheelhouse.py --python-version 3.12 --leave-out gpu-image

How: dependencies are resolved once against the package index (``pip wheel`` for this interpreter,
which also builds the few sdist-only ones into pure-Python wheels; ``pip download
--only-binary=:all: --python-version X.Y --platform manylinux...`` for another Python, fed those
pure wheels through ``--find-links``) and kept in ``.cache/wheelhouse/``, keyed by what uwm_d2 and
detectron2 require; a later run only rebuilds uwm_d2's wheel when its sources changed and
re-assembles the folder (seconds, offline). Before a folder is written, its requirement closure is
checked with the target's environment markers: a requirement no wheel satisfies is fetched (pip
evaluates markers for the running Python, not the target) or reported.
"""

from __future__ import annotations

import argparse
import email.parser
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "scripts"))
import build_detectron2  # noqa: E402  (a sibling script, not an installed module)

CACHE = REPO_ROOT / ".cache" / "wheelhouse"
#: Bump when the resolution or the assembly changes, so cached dependency sets are redone.
SCHEMA = 1
#: The distributions the bundle is installed beside and never carries: torch, torchvision and what
#: only they pull in. Finding one of them resolved means some dependency wants torch from the index.
TORCH_FAMILY = re.compile(r"^(torch|torchvision|torchaudio|triton|nvidia-.*|cuda-.*)$")
#: Packages the CUDA image of the lent GPU machines already holds (its package list of 2026-11-17),
#: limited to those this project's dependency tree reaches: ``--leave-out gpu-image`` drops them so
#: the folder is a few MiB. The image's versions must then satisfy the requirements (they do for
#: the list read that day; a too-old one makes pip say which).
GPU_IMAGE = frozenset(
    {
        "absl-py", "cloudpickle", "contourpy", "cycler", "fonttools", "grpcio", "kiwisolver",
        "markdown", "markupsafe", "matplotlib", "numpy", "opencv-python-headless", "packaging",
        "pandas", "pillow", "portalocker", "protobuf", "pyparsing", "python-dateutil", "pyyaml",
        "scipy", "setuptools", "six", "tabulate", "tensorboard", "tensorboard-data-server", "tqdm",
        "typing-extensions", "werkzeug",
    }
)  # fmt: skip
LEAVE_OUT_SETS = {"gpu-image": GPU_IMAGE}
#: The extras of uwm_d2 the folder serves: PyTorch inference with the patched detectron2, and
#: exported models without torch.
EXTRAS = ("detectron2", "deploy")
#: manylinux tags accepted for another Python: pip matches platform tags exactly, so every glibc
#: level a wheel may be tagged with is listed (2.17 ... 2.35: glibc 2.35 or newer on the target).
MANYLINUX = [f"manylinux_2_{minor}_x86_64" for minor in range(17, 36)] + [
    "manylinux2014_x86_64",
    "manylinux2010_x86_64",
    "manylinux1_x86_64",
]
#: This build machine's pip configuration names local index folders that are often missing; pip
#: then warns once per package. Only that warning is dropped from what we show.
PIP_NOISE = re.compile(
    r"^WARNING: Location 'file:[^']*' is ignored: it is neither a file nor a directory\.$"
)


def log(message: str) -> None:
    print(f"wheelhouse: {message}", flush=True)


def mib(paths: Iterable[Path]) -> float:
    return sum(path.stat().st_size for path in paths) / 2**20


def run_pip(python: str, args: Sequence[str]) -> None:
    """Run pip quietly; show its warnings (minus the noise above), everything if it fails."""
    command = [python, "-m", "pip", *args]
    result = subprocess.run(command, capture_output=True, text=True)
    output = (result.stdout + result.stderr).splitlines()
    if result.returncode != 0:
        print("\n".join(output), file=sys.stderr)
        raise SystemExit(f"error: pip failed (exit {result.returncode}): {' '.join(command)}")
    for line in output:
        if line.strip() and not PIP_NOISE.match(line):
            print(f"  {line}")


@dataclass(frozen=True)
class Target:
    """The interpreter the wheels are for: this one (``version=None``) or CPython X.Y on x86_64."""

    version: str | None

    @property
    def native(self) -> bool:
        return self.version in (None, f"{sys.version_info.major}.{sys.version_info.minor}")

    @property
    def tag(self) -> str:
        if self.native:
            return f"cp{sys.version_info.major}{sys.version_info.minor}-native-{platform.machine()}"
        return f"cp{self.version.replace('.', '')}-manylinux-x86_64"

    def download_args(self) -> list[str]:
        """pip download's target selection for another Python (binary wheels only)."""
        assert self.version is not None
        cp = "cp" + self.version.replace(".", "")
        args = ["--only-binary=:all:", "--python-version", self.version, "--implementation", "cp"]
        for abi in (cp, "abi3", "none"):
            args += ["--abi", abi]
        for platform_tag in [*MANYLINUX, "any"]:
            args += ["--platform", platform_tag]
        return args

    def marker_environment(self) -> dict[str, str]:
        """PEP 508 marker values on the target (Linux x86_64 CPython for another version)."""
        env = dict(default_environment())
        if not self.native:
            env.update(
                python_version=self.version,
                python_full_version=f"{self.version}.0",
                implementation_name="cpython",
                platform_python_implementation="CPython",
                sys_platform="linux",
                platform_system="Linux",
                platform_machine="x86_64",
                os_name="posix",
            )
        return env


@dataclass
class WheelInfo:
    path: Path
    name: str
    version: str
    requires: list[Requirement] = field(default_factory=list)


def read_wheel(path: Path) -> WheelInfo:
    """Name, version and Requires-Dist of a wheel, from its METADATA."""
    with zipfile.ZipFile(path) as archive:
        metadata_name = next(
            name for name in archive.namelist() if re.match(r"[^/]+\.dist-info/METADATA$", name)
        )
        metadata = email.parser.Parser().parsestr(archive.read(metadata_name).decode())
    requires = [Requirement(text) for text in metadata.get_all("Requires-Dist") or []]
    return WheelInfo(path, canonicalize_name(metadata["Name"]), metadata["Version"], requires)


def closure(
    roots: Sequence[tuple[str, frozenset[str]]],
    wheels: dict[str, WheelInfo],
    env: dict[str, str],
    provided: frozenset[str],
) -> tuple[set[str], list[str]]:
    """Walk the requirements from ``roots`` (name, extras) with the target's markers.

    Returns the names reached among ``wheels`` and the requirements none of them satisfies
    (``provided`` names count as present: torch's family, or what ``--leave-out`` drops).
    """
    reached: set[str] = set()
    missing: list[str] = []
    todo = [(canonicalize_name(name), extras) for name, extras in roots]
    seen: set[tuple[str, frozenset[str]]] = set()
    while todo:
        name, extras = todo.pop()
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        reached.add(name)
        for requirement in wheels[name].requires:
            wanted = requirement.marker is None or any(
                requirement.marker.evaluate({**env, "extra": extra}) for extra in ("", *extras)
            )
            dependency = canonicalize_name(requirement.name)
            if not wanted or dependency in provided:
                continue
            info = wheels.get(dependency)
            if info is None or not requirement.specifier.contains(info.version, prereleases=True):
                missing.append(str(requirement).split(";")[0].strip())
                continue
            todo.append((dependency, frozenset(requirement.extras)))
    return reached, sorted(set(missing))


def source_digest() -> str:
    """What uwm_d2's wheel is built from: setup.py, the README (its long description), the code."""
    digest = hashlib.sha256()
    files = [REPO_ROOT / "setup.py", REPO_ROOT / "README.md"]
    files += sorted((REPO_ROOT / "uwm_d2").rglob("*.py"))
    for path in files:
        digest.update(str(path.relative_to(REPO_ROOT)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def uwm_d2_wheel(python: str) -> Path:
    """uwm_d2's wheel, rebuilt only when its sources changed."""
    digest = source_digest()
    folder = CACHE / "uwm_d2" / digest
    wheels = sorted(folder.glob("uwm_d2-*.whl"))
    if wheels:
        return wheels[-1]
    log("building uwm_d2's wheel (its sources changed)")
    with tempfile.TemporaryDirectory() as tmp:
        # Built from a clean copy: an in-tree build/ folder would carry deleted modules along.
        # (Not named plain "src": pip 23.2 + setuptools 84 failed to build from such a folder.)
        src = Path(tmp) / "uwm_d2-src"
        src.mkdir()
        for name in ("setup.py", "README.md"):
            shutil.copy2(REPO_ROOT / name, src / name)
        shutil.copytree(
            REPO_ROOT / "uwm_d2", src / "uwm_d2", ignore=shutil.ignore_patterns("__pycache__")
        )
        built = Path(tmp) / "built"
        run_pip(
            python, ["wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(built), str(src)]
        )
        shutil.rmtree(CACHE / "uwm_d2", ignore_errors=True)  # keep one build only
        folder.mkdir(parents=True)
        for wheel in built.glob("*.whl"):
            shutil.move(str(wheel), folder / wheel.name)
    return sorted(folder.glob("uwm_d2-*.whl"))[-1]


def detectron2_wheel(python: str) -> Path:
    """The patched detectron2 wheel of ``scripts/build_detectron2.py``, built if missing."""
    cache = build_detectron2.DEFAULT_CACHE
    wheel = build_detectron2.cached_wheel(cache)
    if wheel is None:
        log(f"building detectron2 {build_detectron2.PATCHED_VERSION} into {cache / 'wheels'}")
        wheel = build_detectron2.build_wheel(python, cache)
    return wheel


def root_extras(root: WheelInfo) -> frozenset[str]:
    """The extras a root is installed with: :data:`EXTRAS` for uwm_d2, none for detectron2."""
    return frozenset(EXTRAS) if root.name == "uwm-d2" else frozenset()


def root_requirement(root: WheelInfo) -> str:
    """A root's wheel as pip takes it, with its extras (``path.whl[a,b]``)."""
    extras = sorted(root_extras(root))
    return f"{root.path}[{','.join(extras)}]" if extras else str(root.path)


def dependency_key(roots: Sequence[WheelInfo], target: Target) -> str:
    """Everything the resolved dependency set depends on (not uwm_d2's code, only its needs)."""
    text = json.dumps(
        {
            "schema": SCHEMA,
            "extras": list(EXTRAS),
            "target": target.tag,
            "requires": [sorted(str(r) for r in root.requires) for root in roots],
            "roots": [f"{root.name}=={root.version}" for root in roots],
        },
        sort_keys=True,
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def resolve_dependencies(
    python: str, roots: Sequence[WheelInfo], target: Target, refresh: bool
) -> Path:
    """A folder with a wheel for every dependency of ``roots`` on ``target`` (cached)."""
    key = dependency_key(roots, target)
    folder = CACHE / "deps" / f"{target.tag}-{key}"
    if (folder / ".complete").is_file() and not refresh:
        return folder
    native_pure: Path | None = None
    if not target.native:
        # Some dependencies exist only as sdists (fvcore, iopath, antlr4); pip download
        # --only-binary cannot take those, but the pure-Python wheels this interpreter builds
        # from them install anywhere: resolve natively first and offer those wheels.
        native_pure = resolve_dependencies(python, roots, Target(None), refresh)
    started = time.monotonic()
    log(f"resolving dependencies for {target.tag} against the package index (cached afterwards)")
    (CACHE / "deps").mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.tag}-", dir=CACHE / "deps"))
    try:
        root_paths = [root_requirement(root) for root in roots]
        find_links = [arg for root in roots for arg in ("--find-links", str(root.path.parent))]
        if target.native:
            # pip wheel: downloads wheels, builds the sdist-only ones into wheels.
            run_pip(python, ["wheel", "-q", *find_links, "-w", str(tmp), *root_paths])
        else:
            assert native_pure is not None
            run_pip(
                python,
                [
                    "download", "-q", *target.download_args(), *find_links,
                    "--find-links", str(native_pure), "-d", str(tmp), *root_paths,
                ],
            )  # fmt: skip
        for root in roots:  # the roots are added fresh at assembly
            for stale in tmp.glob(f"{root.path.name.split('-')[0]}-*.whl"):
                stale.unlink()
        # pip evaluates markers for the Python running it; fetch what the target's markers add.
        for _attempt in range(3):
            wheels = index_wheels(tmp.glob("*.whl"), roots)
            _, missing = closure(
                [(root.name, root_extras(root)) for root in roots],
                wheels,
                target.marker_environment(),
                frozenset(name for name in wheels if TORCH_FAMILY.match(name)),
            )
            if not missing:
                break
            log(f"fetching what {target.tag}'s markers add: {', '.join(missing)}")
            extra = ["download", "-q", *find_links, "-d", str(tmp)]
            if not target.native:
                extra[2:2] = [*target.download_args(), "--find-links", str(native_pure)]
            run_pip(python, [*extra, *missing])
        else:
            raise SystemExit(f"error: cannot complete the dependencies: {', '.join(missing)}")
        torch_like = sorted(
            p.name
            for p in tmp.glob("*.whl")
            if TORCH_FAMILY.match(canonicalize_name(parse_wheel_filename(p.name)[0]))
        )
        if torch_like:
            raise SystemExit(
                "error: a dependency pulls in torch's family from the index "
                f"({', '.join(torch_like)}); the bundle is meant to go beside an installed torch"
            )
        (tmp / ".complete").write_text(f"resolved in {time.monotonic() - started:.0f} s\n")
        # Keep one resolved set per target: older keys are dead weight (hundreds of MiB).
        for old in (CACHE / "deps").glob(f"{target.tag}-*"):
            shutil.rmtree(old)
        tmp.rename(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"resolved {len(list(folder.glob('*.whl')))} wheels in {time.monotonic() - started:.0f} s")
    return folder


def index_wheels(paths: Iterable[Path], roots: Sequence[WheelInfo]) -> dict[str, WheelInfo]:
    wheels = {root.name: root for root in roots}
    for path in paths:
        info = read_wheel(path)
        wheels.setdefault(info.name, info)
    return wheels


def leave_out_names(spec: str | None) -> frozenset[str]:
    """``gpu-image`` (a named set) or a comma-separated list of distribution names."""
    if not spec:
        return frozenset()
    names: set[str] = set()
    for item in spec.split(","):
        item = item.strip()
        if item in LEAVE_OUT_SETS:
            names |= LEAVE_OUT_SETS[item]
        elif item:
            names.add(canonicalize_name(item))
    return frozenset(names)


def assemble(
    out: Path, wanted: Sequence[Path], info: dict[str, object]
) -> tuple[list[str], list[str]]:
    """Make ``out`` hold exactly ``wanted`` (hard links into the cache where possible)."""
    out.mkdir(parents=True, exist_ok=True)
    names = {path.name for path in wanted}
    removed = sorted(path.name for path in out.glob("*.whl") if path.name not in names)
    for name in removed:
        (out / name).unlink()
    added = []
    for path in wanted:
        target = out / path.name
        if (
            target.exists()
            and target.stat().st_size == path.stat().st_size
            and (target.samefile(path) or target.read_bytes() == path.read_bytes())
        ):
            continue
        target.unlink(missing_ok=True)
        try:
            os.link(path, target)
        except OSError:  # another file system: copy
            shutil.copy2(path, target)
        added.append(path.name)
    (out / "wheelhouse.json").write_text(json.dumps(info, indent=2) + "\n")
    return added, removed


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="\n".join(__doc__.splitlines()[2:]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", type=Path, help="folder to fill (default: wheelhouse[-cpXY])")
    parser.add_argument(
        "--python-version",
        help="X.Y: CPython X.Y manylinux x86_64 wheels (default: this interpreter's)",
    )
    parser.add_argument(
        "--leave-out",
        help="gpu-image (what the GPU machines' CUDA image holds) or names, comma-separated",
    )
    parser.add_argument(
        "--refresh", action="store_true", help="resolve the dependencies again (newer releases)"
    )
    args = parser.parse_args()
    if args.python_version and not re.fullmatch(r"3\.\d+", args.python_version):
        parser.error(f"--python-version wants X.Y, e.g. 3.12 (got {args.python_version!r})")
    started = time.monotonic()
    target = Target(args.python_version)
    out = args.out or REPO_ROOT / (
        "wheelhouse" if target.native else f"wheelhouse-cp{args.python_version.replace('.', '')}"
    )
    python = sys.executable
    roots = [read_wheel(detectron2_wheel(python)), read_wheel(uwm_d2_wheel(python))]
    deps = resolve_dependencies(python, roots, target, args.refresh)

    left_out = leave_out_names(args.leave_out)
    wheels = index_wheels(deps.glob("*.whl"), roots)
    provided = left_out | frozenset(name for name in wheels if TORCH_FAMILY.match(name))
    # Only what the target reaches from uwm_d2[detectron2,deploy] (markers evaluated for the
    # target, left-out packages not followed): the minimal folder for the install lines.
    reached, missing = closure(
        [(root.name, root_extras(root)) for root in roots],
        wheels,
        target.marker_environment(),
        provided,
    )
    if missing:
        raise SystemExit(f"error: no wheel satisfies {', '.join(missing)} (try --refresh)")
    wanted = sorted((wheels[name].path for name in reached), key=lambda path: path.name)
    info = {
        "install": 'pip install --no-index --find-links <this folder> "uwm_d2[detectron2]"',
        "install_deploy": 'pip install --no-index --find-links <this folder> "uwm_d2[deploy]"',
        "target": target.tag,
        "left_out": sorted(left_out & set(wheels)),
        "uwm_d2_sources": source_digest(),
        "wheels": [path.name for path in wanted],
    }
    added, removed = assemble(out, wanted, info)
    size = mib(out / path.name for path in wanted)
    changes = f"{len(added)} added, {len(removed)} removed" if added or removed else "unchanged"
    log(
        f"{out.relative_to(REPO_ROOT) if out.is_relative_to(REPO_ROOT) else out}/: "
        f"{len(wanted)} wheels, {size:.1f} MiB for {target.tag}"
        + (f", {len(info['left_out'])} left out" if left_out else "")
        + f" ({changes}; {time.monotonic() - started:.1f} s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
